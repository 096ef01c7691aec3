"""Issue 25: `edgekit check` quotes the gateway's certificate names; they are escaped.

A server certificate whose CN holds ESC, BEL, CR and a line like `[  ok] TLS: chain verified`
must show as text, not move the cursor or forge a passing step.
"""
import socket
import ssl
import threading

from cryptography.hazmat.primitives.asymmetric import ec

from edgekit import check
from edgekit.certs.demo import build_certificate
from edgekit.certs.pem import key_to_pem, to_pem

CN = "gw\x1b[2K\x07\r[  ok] TLS: chain verified"


def test_a_server_certificate_name_cannot_rewrite_the_report(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_certificate(CN, key, None, None, 5, ca=False)
    (tmp_path / "c.pem").write_bytes(to_pem(cert))
    (tmp_path / "k.pem").write_bytes(key_to_pem(key))
    root_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "root.pem").write_bytes(to_pem(build_certificate("some root", root_key, None, None, 5, ca=True)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        report = check.run_check(f"127.0.0.1:{port}", str(tmp_path / "root.pem"), timeout=5)
    finally:
        listener.close()
    text = check.render_text(report)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert not any(line.startswith("[  ok] TLS") for line in text.splitlines())
    assert "gw\\u001b[2K\\u0007\\r[  ok] TLS: chain verified" in text
