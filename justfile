# Shortcuts for people who have `just`; every recipe is a plain cargo command
# that works without it (see README.md).

# The paper's MNIST experiment on the bundled data.
demo *ARGS:
    cargo run --release -- demo {{ARGS}}

# Everything CI runs.
ci:
    bash .ci/run

test:
    cargo test --release --workspace

lint:
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# Per-shard guest vs native timings on the paper's MLP and LeNet-5.
bench:
    cargo run --release -- model mlp --out target/mlp.onnx
    cargo run --release -- bench guest --model target/mlp.onnx
    cargo run --release -- model lenet5 --out target/lenet5.onnx
    cargo run --release -- bench guest --model target/lenet5.onnx
