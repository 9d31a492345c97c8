//! The decoder mirrors the layers before a cut, or says which node it
//! cannot mirror and why: a prefix with a window it has no transpose for
//! is a clear error before any training.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_audit::{
    DecoderOutput, DecoderShape, InverseNet, InverseNetConfig, SplitAt, Victim, cut, decoder,
    decoder_with,
};
use mixnn_shard::pb;

fn lenet_prefix() -> mixnn_audit::Cut {
    let model = mixnn_shard::lenet5(1, 4, mixnn_shard::Form::Gemm);
    cut(&model, &SplitAt::Shards(2)).unwrap()
}

fn set_ints(model: &mut pb::ModelProto, op: &str, name: &str, values: &[i64]) {
    let g = model.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.op_type == op).unwrap();
    n.attribute.retain(|a| a.name != name);
    n.attribute.push(pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    });
}

#[test]
fn a_plain_prefix_mirrors_and_odd_windows_are_named() {
    let c = lenet_prefix();
    decoder(&c.prefix, &c.input_shape, &c.z_shape, 4).expect("LeNet-5's first two layers mirror");

    let cases: [(&str, &str, &[i64], &str); 3] = [
        (
            "Conv",
            "dilations",
            &[2, 2],
            "dilated windows are not mirrored",
        ),
        ("MaxPool", "ceil_mode", &[], "ceil mode is not mirrored"),
        (
            "Conv",
            "group",
            &[],
            "grouped convolutions are not mirrored",
        ),
    ];
    for (op, attr, values, want) in cases {
        let mut prefix = c.prefix.clone();
        if values.is_empty() {
            // An int attribute set to a value the mirror refuses.
            let g = prefix.graph.as_mut().unwrap();
            let n = g.node.iter_mut().find(|n| n.op_type == op).unwrap();
            n.attribute.retain(|a| a.name != attr);
            n.attribute.push(pb::AttributeProto {
                name: attr.into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 2,
                ..Default::default()
            });
        } else {
            set_ints(&mut prefix, op, attr, values);
        }
        let e = decoder(&prefix, &c.input_shape, &c.z_shape, 4)
            .expect_err(want)
            .to_string();
        assert!(e.contains(want) && e.contains(op), "{attr}: {e}");
    }
}

#[test]
fn images_of_another_shape_than_the_model_takes_are_refused() {
    let c = lenet_prefix();
    // Flat vectors where the first layer wants (channels, height, width).
    let e = decoder(&c.prefix, &[784], &c.z_shape, 4)
        .expect_err("a flat input cannot be mirrored by windows")
        .to_string();
    assert!(e.contains("cannot mirror"), "{e}");
}

#[test]
fn a_linear_output_drops_only_the_final_relu() {
    let c = lenet_prefix();
    let ops = |m: &pb::ModelProto| -> Vec<String> {
        let g = m.graph.as_ref().unwrap();
        // The graph ends in an Identity naming its output; skip it.
        g.node
            .iter()
            .map(|n| n.op_type.clone())
            .filter(|op| op != "Identity")
            .collect()
    };
    let relu = decoder_with(
        &c.prefix,
        &c.input_shape,
        &c.z_shape,
        4,
        (DecoderShape::Mirror, DecoderOutput::Relu),
    );
    let linear = decoder_with(
        &c.prefix,
        &c.input_shape,
        &c.z_shape,
        4,
        (DecoderShape::Mirror, DecoderOutput::Linear),
    );
    let (relu, linear) = (ops(&relu.unwrap()), ops(&linear.unwrap()));
    assert_eq!(relu.last().map(String::as_str), Some("Relu"), "{relu:?}");
    assert_eq!(
        linear.last().map(String::as_str),
        Some("ConvTranspose"),
        "{linear:?}"
    );
    assert_eq!(
        &relu[..relu.len() - 1],
        &linear[..],
        "only the last ReLU goes"
    );
    let plain = decoder(&c.prefix, &c.input_shape, &c.z_shape, 4).unwrap();
    assert_eq!(ops(&plain), relu, "decoder() keeps the final ReLU");
}

fn ints_of(n: &pb::NodeProto, name: &str) -> Vec<i64> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
        .unwrap_or_default()
}

/// He et al.'s relu2 decoder: two transposed convolutions, the pool folded
/// into the second one's stride, a ReLU between, none after; and it trains.
#[test]
fn a_compact_decoder_folds_the_pool_into_a_stride_and_trains() {
    let model = mixnn_shard::lenet5(1, 4, mixnn_shard::Form::Gemm);
    let c = cut(&model, &SplitAt::Node("relu2".into())).unwrap();
    let spec = (DecoderShape::Compact, DecoderOutput::Linear);
    let d = decoder_with(&c.prefix, &c.input_shape, &c.z_shape, 4, spec).unwrap();
    let g = d.graph.as_ref().unwrap();
    let layers: Vec<_> = g.node.iter().filter(|n| n.op_type != "Identity").collect();
    let ops: Vec<_> = layers.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["ConvTranspose", "Relu", "ConvTranspose"]);
    assert_eq!(ints_of(layers[0], "strides"), [1, 1]);
    assert_eq!(ints_of(layers[2], "strides"), [2, 2]);
    assert_eq!(ints_of(layers[2], "output_padding"), [1, 1]);

    // Random bright squares, 3 epochs: the loss falls (tract runs the
    // shapes the builder computed).
    let mut victim = Victim::new(&c).unwrap();
    let mut aux = vec![0.0f32; 256 * 784];
    for (i, img) in aux.chunks_exact_mut(784).enumerate() {
        let (r, col) = ((i * 7) % 20, (i * 13) % 20);
        for y in r..r + 8 {
            img[y * 28 + col..y * 28 + col + 8].fill(1.0);
        }
    }
    let cfg = InverseNetConfig {
        epochs: 3,
        batch: 32,
        learning_rate: 3e-3,
        shape: DecoderShape::Compact,
        output: DecoderOutput::Linear,
        ..InverseNetConfig::default()
    };
    let net = InverseNet::train(&c, &mut victim, &aux, &cfg, &mut |_| {}).unwrap();
    let loss = &net.epoch_loss;
    assert!(loss.last() < loss.first(), "{loss:?}");
}
