# CPython's TLS setup for the host adapter, apart so MicroPython never loads it.
def tls_context(ca, cert=None, key=None):
    """Verify the gateway against a DER root or a list of them; client certificates (a list of DER: the leaf,
    then its intermediates) and key as DER bytes."""
    import os
    import ssl
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and hostname
    for der in ca if isinstance(ca, list) else (ca,):
        ctx.load_verify_locations(cadata=der)  # each call adds
    if cert:
        # CPython loads client certificates from PEM files only.
        fd, path = tempfile.mkstemp(suffix=".pem")
        try:
            with os.fdopen(fd, "w") as f:
                for der in cert:
                    f.write(ssl.DER_cert_to_PEM_cert(der))
                f.write(_der_key_to_pem(key))
            ctx.load_cert_chain(path)
        finally:
            os.remove(path)
    return ctx


def _der_key_to_pem(der):
    import base64
    # PKCS#8 starts SEQUENCE { INTEGER 0, SEQUENCE ...}; SEC1 has version 1; PKCS#1 has INTEGER next.
    body = der[4:] if der[1] == 0x82 else der[3:] if der[1] == 0x81 else der[2:]
    kind = "PRIVATE KEY"
    if body[:3] == b"\x02\x01\x01":
        kind = "EC PRIVATE KEY"
    elif body[:3] == b"\x02\x01\x00" and body[3] == 0x02:
        kind = "RSA PRIVATE KEY"
    b64 = base64.encodebytes(der).decode()
    return "-----BEGIN %s-----\n%s-----END %s-----\n" % (kind, b64, kind)
