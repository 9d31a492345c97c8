// TEMPORARY profiling harness (not to be committed).
use mixnn_grad::{GradOptions, pb};
use prost::Message;
use tract_onnx::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = &args[1];
    let batch: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(64);
    let which: Option<usize> = args.get(3).map(|s| s.parse().unwrap());
    let bytes = std::fs::read(path).unwrap();
    if std::env::var_os("BENCH").is_some() {
        let model = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None).unwrap()).unwrap();
        let sb = mixnn_sandbox::Sandbox::new(mixnn_sandbox::SandboxOptions {
            cache_dir: mixnn_sandbox::SandboxOptions::default_cache_dir(),
            ..Default::default()
        })
        .unwrap();
        let iters = std::env::var("ITERS")
            .ok()
            .map(|s| s.parse().unwrap())
            .unwrap_or(30);
        let opts = mixnn_designer::BenchOptions {
            batches: vec![batch],
            iterations: iters,
            seed: 0,
            only: std::env::var("SHARD")
                .ok()
                .map(|s| vec![s.parse().unwrap()]),
        };
        let r = mixnn_designer::bench_guest(&shards, &opts, &sb, &mut |_| {}).unwrap();
        print!("{}", mixnn_designer::render_bench(&r));
        return;
    }
    let model = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let shards = mixnn_shard::split(&model, &mixnn_shard::plan(&model, None).unwrap()).unwrap();
    for (i, s) in shards.iter().enumerate() {
        if which.is_some_and(|w| w != i) {
            continue;
        }
        let mut shape = mixnn_layer::declared_input_shape(s).unwrap();
        shape[0] = batch;
        let g = mixnn_grad::build(
            s,
            &GradOptions {
                input_shape: shape.clone(),
                need_input_grad: i > 0,
            },
        )
        .unwrap();
        println!(
            "saved: {:?}",
            g.saved
                .iter()
                .map(|s| (&s.name, &s.shape, s.integer))
                .collect::<Vec<_>>()
        );
        for (name, m) in [
            ("forward", &g.train_forward),
            ("backward", &g.train_backward),
        ] {
            println!("==== shard{i} {name} ONNX");
            for n in &m.graph.as_ref().unwrap().node {
                let attrs: Vec<String> = n
                    .attribute
                    .iter()
                    .map(|a| format!("{}={}{:?}", a.name, a.i, a.ints))
                    .collect();
                println!(
                    "  {} {:?} -> {:?} {}",
                    n.op_type,
                    n.input,
                    n.output,
                    attrs.join(",")
                );
            }
            let mut tm = tract_onnx::onnx().model_for_proto_model(m).unwrap();
            let mut inputs = vec![shape.clone()];
            inputs.extend(g.params.iter().map(|p| p.shape.clone()));
            let mut ints = vec![];
            if name == "backward" {
                inputs.push(g.output_shape.clone());
                inputs.push(g.output_shape.clone());
                for sv in &g.saved {
                    if sv.integer {
                        ints.push(inputs.len());
                    }
                    inputs.push(sv.shape.clone());
                }
            }
            for (ix, sh) in inputs.iter().enumerate() {
                tm.set_input_fact(
                    ix,
                    InferenceFact::dt_shape(
                        if ints.contains(&ix) {
                            i64::datum_type()
                        } else {
                            f32::datum_type()
                        },
                        sh.as_slice(),
                    ),
                )
                .unwrap();
            }
            let opt = tm.into_optimized().unwrap();
            println!("==== shard{i} {name} tract optimized");
            for n in opt.nodes() {
                println!(
                    "  #{} {} [{}] {:?}",
                    n.id,
                    n.name,
                    n.op.name(),
                    n.outputs
                        .iter()
                        .map(|o| format!("{:?}", o.fact))
                        .collect::<Vec<_>>()
                );
                for l in n.op.info().unwrap_or_default() {
                    println!("       {l}");
                }
            }
            // time natively per node with profiling
            let plan = opt.into_runnable().unwrap();
            let ins: TVec<TValue> = inputs
                .iter()
                .enumerate()
                .map(|(ix, sh)| {
                    let n: usize = sh.iter().product();
                    if ints.contains(&ix) {
                        return tract_onnx::prelude::Tensor::from_shape(sh, &vec![0i64; n])
                            .unwrap()
                            .into_tvalue();
                    }
                    tract_onnx::prelude::Tensor::from_shape(
                        sh,
                        &(0..n).map(|k| ((k % 13) as f32) * 0.01).collect::<Vec<_>>(),
                    )
                    .unwrap()
                    .into_tvalue()
                })
                .collect();
            let t0 = std::time::Instant::now();
            let iters = 50;
            for _ in 0..iters {
                plan.run(ins.clone()).unwrap();
            }
            println!(
                "==== native {:.1} us/run",
                t0.elapsed().as_secs_f64() * 1e6 / iters as f64
            );
            use tract_onnx::tract_hir::tract_core;
            let mut per: std::collections::BTreeMap<usize, (String, f64)> = Default::default();
            let mut state = tract_core::plan::SimpleState::new(&plan).unwrap();
            for _ in 0..iters {
                state
                    .run_plan_with_eval(ins.clone(), |ctx, st, node, inp| {
                        let t = std::time::Instant::now();
                        let r = tract_core::plan::eval(ctx, st, node, inp);
                        let e = per.entry(node.id).or_insert((
                            format!("#{} {} [{}]", node.id, node.name, node.op.name()),
                            0.0,
                        ));
                        e.1 += t.elapsed().as_secs_f64() * 1e6 / iters as f64;
                        r
                    })
                    .unwrap();
            }
            let mut v: Vec<_> = per.into_values().collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (n, t) in v.iter().take(12) {
                println!("   {t:8.1} us  {n}");
            }
        }
    }
}
