"""The names a certificate carries: subject common names, subjectAltName entries, and the
test-only marker of certGen.sh; and telling an IP address from a host name."""
import ipaddress

from cryptography import x509

# certGen.sh and `edgekit certs demo` put one of these in their certificate and file names.
TEST_ONLY_MARKERS = ("test-only", "test_only", "testonly")


def common_names(name):
    """Every common name (CN) value of an x509 Name, in order."""
    return [a.value for a in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def common_name(name):
    """The first common name (CN) of an x509 Name, or None when it has none."""
    cns = common_names(name)
    return cns[0] if cns else None


def display_name(name):
    """An x509 Name for messages: its first CN, or the whole name (RFC 4514) when it has no CN."""
    cns = common_names(name)
    return cns[0] if cns else name.rfc4514_string()


def subject_alt_name(cert):
    """The certificate's subjectAltName extension value, or None when it has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def san_entries(cert):
    """[("DNS", name), ..., ("IP", address), ...]: DNS names first, then IP addresses as text;
    [] without a subjectAltName. Other entry types (email, URI) are left out: TLS ignores them."""
    san = subject_alt_name(cert)
    if san is None:
        return []
    return [("DNS", str(v)) for v in san.get_values_for_type(x509.DNSName)] + \
        [("IP", str(v)) for v in san.get_values_for_type(x509.IPAddress)]


def san_names(cert):
    """The DNS names, then IP addresses (as text), in the certificate's subjectAltName; [] without one."""
    return [text for _, text in san_entries(cert)]


def parse_ip(text):
    """text as an IPv4/IPv6 address object, or None when it is not one (a host name, then)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_test_only(*texts):
    """True when any of texts (subjects, issuers, file names) carries the test-only marker."""
    # Joined with spaces so a marker cannot be made of the end of one text and the start of the next.
    text = " ".join(texts).lower()
    return any(m in text for m in TEST_ONLY_MARKERS)
