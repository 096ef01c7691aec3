"""What a user does on the real IoT Edge box for downstream devices: the lines `edgekit bundle` and
`edgekit certs demo` print (az commands, config.toml, the files to copy, the ports to open)."""
import os

# Where IoT Edge's own docs put the files (aziot-edge reads them as root; keys 0600 there).
CERTS_ON_BOX = "/var/aziot/certs"
SECRETS_ON_BOX = "/var/aziot/secrets"


def gateway_steps(gateway_host, root_cert, edge_ca_chain=None, edge_ca_key=None, hub=None,
                  gateway_device_id=None):
    """Lines for the IoT Edge box behind which the devices run; file arguments are local paths.

    Without edge_ca_chain/edge_ca_key (a bundle knows only the root) the [edge_ca] lines name
    placeholders for the edge CA the user made with the same root.
    """
    hub = hub or "<hub-name>"
    gw = gateway_device_id or "<gateway-device-id>"
    root_name = os.path.basename(str(root_cert))
    chain_name = os.path.basename(str(edge_ca_chain)) if edge_ca_chain else "<edge CA full chain>.cert.pem"
    key_name = os.path.basename(str(edge_ca_key)) if edge_ca_key else "<edge CA>.key.pem"
    copies = [f"     sudo install -m 0644 {_local(root_cert)} {CERTS_ON_BOX}/{root_name}"]
    if edge_ca_chain:
        copies.append(f"     sudo install -m 0644 {_local(edge_ca_chain)} {CERTS_ON_BOX}/{chain_name}")
    if edge_ca_key:
        copies.append(f"     sudo install -m 0600 -o aziotks {_local(edge_ca_key)} {SECRETS_ON_BOX}/{key_name}")
    return [
        "On the IoT Edge box (the gateway):",
        "  1. Register it as an IoT Edge device, once (az CLI with the azure-iot extension):",
        f"     az iot hub device-identity create -n {hub} -d {gw} --edge-enabled",
        f"     az iot hub device-identity connection-string show -n {hub} -d {gw}   # into [provisioning] of config.toml",
        "  2. Copy the CA files there:",
        f"     sudo mkdir -p {CERTS_ON_BOX} {SECRETS_ON_BOX}",
        *copies,
        "  3. In /etc/aziot/config.toml, then 'sudo iotedge config apply':",
        f'     hostname = "{gateway_host}"   # exactly the GatewayHostName the devices use',
        f'     trust_bundle_cert = "file://{CERTS_ON_BOX}/{root_name}"',
        "     [edge_ca]",
        f'     cert = "file://{CERTS_ON_BOX}/{chain_name}"',
        f'     pk = "file://{SECRETS_ON_BOX}/{key_name}"',
        "  4. Open the ports devices connect to: 8883 (MQTT over TLS, these boards);"
        " 443 and 5671 for AMQP and WebSocket clients:",
        "     sudo ufw allow 8883/tcp && sudo ufw allow 5671/tcp && sudo ufw allow 443/tcp",
        "  5. Each device's parent is the gateway:",
        f"     az iot hub device-identity parent set -n {hub} -d <device-id> --pd {gw}",
        f"  Then check it from here: edgekit check {gateway_host} --ca {_local(root_cert)}",
    ]


def _local(path):
    short = os.path.relpath(str(path))
    return str(path) if short.startswith("..") else short
