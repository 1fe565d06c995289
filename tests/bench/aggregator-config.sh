# Sourced by the bench scripts. `aggregator_config GRPC_PORT REST_PORT STORAGE_URL PKI_DIR`
# prints the aggregator configuration they share: gRPC on loopback with the
# PKI's server certificate (PKI_DIR absolute), REST on loopback, and the
# storage URL. A script appends its own tables after it.
aggregator_config() {
  cat <<TOML
[grpc]
listen = "127.0.0.1:$1"
[grpc.tls]
ca = "$4/ca.pem"
cert = "$4/server.pem"
key = "$4/server-key.pem"
[rest]
listen = "127.0.0.1:$2"
[storage]
url = "$3"
TOML
}
