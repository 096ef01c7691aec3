"""Certificates PEM<->DER, picking the root out of a bundle, and keys to unencrypted DER for the board."""
import os

from edgekit.certs import certgen
from edgekit.certs.pem import (CertError, _is_pem, _read, key_matches, key_to_der, key_to_pem,
                                  load_certificates, load_private_key, pem_blocks, to_der, to_pem,
                                  write_atomic, _KEY_LABELS)

FORMATS = ("der", "pem")
_EXT = {".der": "der", ".cer": "der", ".pem": "pem", ".crt": "pem"}


def target_format(dst, to=None):
    """'der' or 'pem': the --to value, else from DST's extension (.der/.cer or .pem/.crt)."""
    if to:
        if to not in FORMATS:
            raise CertError(f"unknown format '{to}'; use --to der or --to pem")
        return to
    ext = os.path.splitext(os.fspath(dst))[1].lower()
    if ext not in _EXT:
        raise CertError(f"cannot tell the output format from '{dst}'; add --to der or --to pem")
    return _EXT[ext]


def is_key_file(path):
    """True when the file holds a private key (PEM label or DER key), not certificates."""
    data = _read(path)
    if _is_pem(data):
        return any(label.encode() in _KEY_LABELS for label, _ in pem_blocks(data, path))
    try:
        load_certificates(path)
        return False
    except CertError as e:
        return "private key" in str(e)


def pick_root(certs, source="the bundle"):
    """The one self-signed certificate of a list; CertError when there is none or several."""
    roots = [c for c in certs if c.subject == c.issuer]
    if len(roots) == 1:
        return roots[0]
    if not roots:
        top = certs[-1]
        raise CertError(f"{source} holds no self-signed root (the last one, '{top.subject.rfc4514_string()}', "
                        f"is issued by '{top.issuer.rfc4514_string()}'); get that root CA from your PKI")
    raise CertError(f"{source} holds {len(roots)} self-signed roots; split it and pick one")


def _numbered(dst, i):
    stem, ext = os.path.splitext(os.fspath(dst))
    return f"{stem}-{i}{ext}"


def convert(src, dst, to=None, password=None, root=False, match=None):
    """Convert SRC into DST; return the list of paths written.

    SRC may be a certificate file (PEM, bundle or DER), a private key (PKCS#1, SEC1, PKCS#8,
    encrypted with `password` or not) or a certGen folder (its root CA is taken).
    Certificates: one file per certificate; from a bundle `root=True` writes only the root,
    otherwise DST-1, DST-2, ... in file order. Keys: unencrypted PKCS#8 (the DER form
    MicroPython's mbedTLS loads), mode 0600; `match` names a certificate the key must belong to.
    Everything is checked before the first byte is written; each file is written via rename.
    """
    fmt = target_format(dst, to)
    if os.path.isdir(dst):
        raise CertError(f"{dst} is a folder; give the output file name (e.g. {os.path.join(dst, 'ca.der')})")
    if os.path.isdir(src):
        src, root = certgen.find_root(src), True
    outputs = []  # (path, data, private)
    if is_key_file(src):
        if root:
            raise CertError(f"{src} is a private key; --root picks a certificate out of a bundle")
        key = load_private_key(src, password)
        if match is not None:
            certs = load_certificates(match)
            if not key_matches(certs[0], key):
                raise CertError(f"{src} does not match the certificate in {match}; "
                                "use the key that was made with that certificate")
        outputs.append((dst, key_to_der(key) if fmt == "der" else key_to_pem(key), True))
    else:
        if match is not None:
            raise CertError("--match applies to keys; give the private key as SRC")
        certs = load_certificates(src)
        if root:
            certs = [pick_root(certs, src)]
        encode = to_der if fmt == "der" else to_pem
        if len(certs) == 1:
            outputs.append((dst, encode(certs[0]), False))
        else:
            outputs += [(_numbered(dst, i + 1), encode(c), False) for i, c in enumerate(certs)]
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise CertError(f"folder {folder} does not exist; create it first")
    for path, data, private in outputs:
        write_atomic(path, data, private=private)
    return [p for p, _, _ in outputs]
