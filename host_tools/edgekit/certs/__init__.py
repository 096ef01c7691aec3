"""Certificate toolkit: read, convert, inspect and verify certificates, and make test PKIs.

The functions here are what `edgekit certs` runs; other host tools (bundle, gateway
emulator, checker) call them directly.
"""
from edgekit.certs.pem import (  # noqa: F401
    CertError,
    key_to_der,
    load_certificates,
    load_private_key,
    thumbprints,
    to_der,
)
