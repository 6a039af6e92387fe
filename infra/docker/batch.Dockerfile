# The batch-prediction image: `mlops batch-predict --job s3://…` on AWS Batch (Fargate), which the
# batch function submits. Native-free: `mlops` built without the `train` feature links neither
# libxgboost, LightGBM nor libtorch, and predicts with the pure-Rust engine; the runtime image
# holds the stripped binary on distroless's glibc base, nothing else (no shell, no package manager).
# Fargate pulls the image at every job start, so its size is start-up time.
#
# Build from the repository root:
#   docker build -f infra/docker/batch.Dockerfile -t mlops-batch-predict .
# Training commands (`train`, `job`, `quickstart`) exit with status 2 in this image, naming the
# training image (infra/docker/Dockerfile) to run them with.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mlops --no-default-features \
 && strip target/release/mlops

# glibc, libgcc_s and CA certificates (Debian 12, the build stage's glibc), running as nonroot.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mlops batch prediction" \
      org.opencontainers.image.description="mlops batch-predict with the pure-Rust engine (no native model libraries)"
COPY --from=build /src/target/release/mlops /usr/local/bin/mlops
# distroless's nonroot user.
USER 65532:65532
WORKDIR /home/nonroot
ENV MLOPS_HOME=/home/nonroot/.mlops
# No entry point: AWS Batch sends the whole command, `mlops batch-predict --job …`.
CMD ["mlops", "--help"]
