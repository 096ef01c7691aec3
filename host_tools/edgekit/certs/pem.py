"""Read certificates, PEM bundles and private keys, with errors that say what to do."""
import base64
import os
import re
import stat
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class CertError(ValueError):
    """A certificate or key file that cannot be used as given; the message says why and what to do."""


_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY")


# No certificate, chain or key comes near this: a certGen full chain is about 6 KB, an RSA-4096
# key 3.3 KB. Anything larger is the wrong file, or a hostile one (/dev/zero would never end).
MAX_INPUT_BYTES = 1 << 20


def read_input(path):
    """The bytes of a certificate or key file; CertError for anything but a regular file of sane size.

    The one reader for every cert/key input (bundle, check, certs, gateway): a FIFO, device or
    folder is refused before it is opened, and no more than MAX_INPUT_BYTES + 1 are ever read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CertError(f"{path}: no such file")
    except OSError as e:
        raise CertError(f"{path}: cannot read ({e.strerror})")
    if stat.S_ISDIR(st.st_mode):
        raise CertError(f"{path} is a folder; give a file (or use a command that takes a certGen certs/ folder)")
    if not stat.S_ISREG(st.st_mode):
        raise CertError(f"{path} is not a regular file (a device, pipe or socket); give the certificate or key file")
    if st.st_size > MAX_INPUT_BYTES:
        raise CertError(f"{path} is {st.st_size} bytes, larger than any certificate or key"
                        f" ({MAX_INPUT_BYTES} at most); give the right file")
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since the stat
                raise CertError(f"{path} is not a regular file; give the certificate or key file")
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        raise CertError(f"{path}: cannot read ({e.strerror})")
    if len(data) > MAX_INPUT_BYTES:
        raise CertError(f"{path} is larger than any certificate or key ({MAX_INPUT_BYTES} bytes at most)")
    return data


def _read(path):
    data = read_input(path)
    if not data.strip():
        raise CertError(f"{path} is empty")
    return data


def _is_pem(data):
    return b"-----BEGIN " in data


def pem_blocks(data, path="input"):
    """Split PEM text into (label, der_bytes) pairs; anything but whitespace between blocks is an error."""
    blocks = []
    pos = 0
    for m in _BLOCK.finditer(data):
        _check_gap(data, pos, m.start(), path)
        label = m.group(1)
        body = m.group(2)
        try:
            # Lines with ':' are RFC 1421 headers (Proc-Type, DEK-Info) of encrypted keys.
            der = base64.b64decode(b"".join(line.strip() for line in body.splitlines()
                                            if b":" not in line), validate=True)
        except ValueError:
            line = data.count(b"\n", 0, m.start()) + 1
            raise CertError(f"{path}: the PEM block at line {line} is corrupted (bad base64); "
                            "export the file again")
        blocks.append((label.decode(), der))
        pos = m.end()
    _check_gap(data, pos, len(data), path)
    if not blocks:
        raise CertError(f"{path}: no complete PEM block (missing -----END line?); export the file again")
    return blocks


def _check_gap(data, start, end, path):
    gap = data[start:end]
    if b"-----BEGIN " in gap:
        line = data.count(b"\n", 0, start + gap.index(b"-----BEGIN ")) + 1
        raise CertError(f"{path}: the PEM block at line {line} has no matching -----END line; "
                        "the file is cut short or damaged: copy it again")
    if gap.strip():
        line = data.count(b"\n", 0, start + (len(gap) - len(gap.lstrip()))) + 1
        raise CertError(f"{path}: unexpected text at line {line}, outside any PEM block; "
                        "a bundle may hold only concatenated -----BEGIN/END----- blocks")


def load_certificates(path):
    """All certificates in a PEM bundle or a DER file, in file order; CertError on anything else."""
    data = _read(path)
    if _is_pem(data):
        certs = []
        for label, der in pem_blocks(data, path):
            if label.encode() in _KEY_LABELS:
                raise CertError(f"{path} holds a private key, not a certificate; "
                                "pass the .cert.pem file (keys go to --key)")
            if label not in ("CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE"):
                raise CertError(f"{path} holds a '{label}' PEM block, not a certificate")
            certs.append(_der_cert(der, path))
        return certs
    try:
        return [_parsed(data)]
    except ValueError:
        pass
    if _looks_like_der_key(data):
        raise CertError(f"{path} is a private key, not a certificate; pass the certificate file")
    raise CertError(f"{path} is not a certificate (neither PEM nor DER X.509)")


def _der_cert(der, path):
    try:
        return _parsed(der)
    except ValueError:
        raise CertError(f"{path}: a CERTIFICATE block does not parse as X.509; export the file again")


def _parsed(der):
    """A certificate whose names, extensions and key parse too; ValueError otherwise."""
    cert = x509.load_der_x509_certificate(der)
    # cryptography parses these only when first asked: ask now, so a damaged certificate is
    # refused here with CertError instead of failing later, in inspect or verify, as a traceback.
    try:
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        list(cert.extensions)
        cert.public_key()
    except Exception as e:  # ValueError, DuplicateExtension, UnsupportedAlgorithm ...
        raise ValueError(str(e))
    return cert


def _looks_like_der_key(data):
    try:
        serialization.load_der_private_key(data, None)
        return True
    except TypeError:  # encrypted PKCS#8 key
        return True
    except (ValueError, Exception):
        return False


def load_certificate(path):
    """Exactly one certificate from a file; CertError when it holds none or several."""
    certs = load_certificates(path)
    if len(certs) != 1:
        raise CertError(f"{path} holds {len(certs)} certificates where one is expected; "
                        "split it with 'edgekit certs convert' (or pick with --root)")
    return certs[0]


def load_private_key(path, password=None):
    """An RSA or EC private key from PEM (PKCS#1, SEC1, PKCS#8, encrypted or not) or DER."""
    data = _read(path)
    if isinstance(password, str):
        password = password.encode()
    if _is_pem(data):
        blocks = pem_blocks(data, path)
        keys = [(label, der) for label, der in blocks if label.encode() in _KEY_LABELS]
        if not keys:
            if any(label == "CERTIFICATE" for label, _ in blocks):
                raise CertError(f"{path} is a certificate, not a private key; pass the .key.pem file")
            raise CertError(f"{path} holds no private key")
        if len(keys) > 1:
            raise CertError(f"{path} holds {len(keys)} private keys; give a file with one")
        loader, data = serialization.load_pem_private_key, _reblock(data, keys[0][0])
    else:
        loader = serialization.load_der_private_key
    try:
        key = loader(data, password)
    except TypeError as e:
        if "not encrypted" in str(e):
            # A password for a plain key is ignored; read it again without (it may still be damaged).
            return load_private_key(path, None)
        raise CertError(f"{path} is encrypted; give its password with --password")
    except ValueError as e:
        if password is not None and ("decrypt" in str(e).lower() or "password" in str(e).lower()):
            raise CertError(f"{path}: wrong password")
        if not _is_pem(data):
            try:
                x509.load_der_x509_certificate(data)
                raise CertError(f"{path} is a certificate, not a private key; pass the .key.pem file")
            except ValueError:
                pass
        raise CertError(f"{path} is not a private key the tools can read (PEM or DER, RSA or EC)")
    except Exception:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise CertError(f"{path} is not a private key the tools can read (PEM or DER, RSA or EC)")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertError(f"{path}: only RSA and EC keys work with mbedTLS on the board, not {type(key).__name__}")
    return key


def _reblock(data, label):
    """The single PEM block with this label, so certificates in the same file do not confuse the loader."""
    m = re.search(rb"-----BEGIN " + re.escape(label.encode()) + rb"-----.*?-----END "
                  + re.escape(label.encode()) + rb"-----", data, re.S)
    return m.group(0) + b"\n"


def to_der(path_or_cert):
    """DER bytes of a certificate object, or of the single certificate in a file."""
    if isinstance(path_or_cert, x509.Certificate):
        return path_or_cert.public_bytes(serialization.Encoding.DER)
    return load_certificate(path_or_cert).public_bytes(serialization.Encoding.DER)


def to_pem(cert):
    """PEM text (bytes) of one certificate object."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_der(key):
    """Unencrypted PKCS#8 DER: the form MicroPython's mbedTLS `load_cert_chain` takes (checked on 1.29)."""
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_to_pem(key):
    """Unencrypted PKCS#8 PEM text (bytes) of a private key."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def is_ca(cert):
    """True when the certificate's basicConstraints say it is a CA."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def thumbprints(cert):
    """(SHA-1, SHA-256) of the DER certificate, in the upper-case hex IoT Hub shows."""
    return (cert.fingerprint(hashes.SHA1()).hex().upper(),
            cert.fingerprint(hashes.SHA256()).hex().upper())


def key_matches(cert, key):
    """True when the private key belongs to the certificate's public key."""
    return cert.public_key().public_numbers() == key.public_key().public_numbers()


def write_atomic(path, data, private=False):
    """Write via a temp file and rename, so a failure leaves no partial file; keys get mode 0600."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".edgekit-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
