# The root keys an ADU update manifest may chain to, and how a bundle overrides them.
# Imported only while a deployment is handled, with adu_verify.
#
# MICROSOFT: Device Update's public RSA-3072 roots exactly as Azure/iot-hub-device-update
# publishes them, src/utils/root_key_utils/src/root_key_list.c (HardcodedRSARootKeyList, the
# non-test branch): kid, base64url n (with its leading 00 byte), e = 65537. The same moduli are in
# Azure/azure-iot-middleware-freertos's samples and in the agent's root-key package test data.
import json

MICROSOFT = {
    "ADU.200702.R": {
        "kty": "RSA", "e": 65537,
        "n": "ANVCLq8RVKNQZYeiTVu6GvupMt_pmV8FRcivvTUdiegnJ1ijqO7FxR5P95KmEgZ9"
             "PX2wB_Ysf95tKvW8SbwV7_CByz-ITycdiHEoYAi2GdLSOdAFHzx2hnG7WVi8sYh7"
             "q1YovzFzRDIQ_T3Tllz_Tlyza_-LhJuLgLhJ0H361kBYdk3Acid1y5ovm7SfDyXx"
             "HMUbC1owfS-476cmWFOv1R1VAVEN6RuiDz_X6R0gQabmFAqu_vIcKtbkBHv2FH7s"
             "D5eD-lj6gTYhuaMr-tlhCxqU98G-f0AUSsn6NX_vZnAAsf3b12ENO1h0Z5SJdXaW"
             "fJGH0o4Rl-57h2yaL0XYZT9ScJgqy8gEY_XJR89w9O1kp3SlI4-27fcc07AcZFcS"
             "WqmBhB-g51AZlrSCsaxI4-EygstAH6zEWbwQNFGC-SiNqB6b9XlFdbLcmhFDCL5h"
             "zJrEy3c2_4PdqHFPUY4Oe036eZiNvvyCfkBIqRIBqNl-86Ub8fuQdz5AhxjJq9n3"
             "eQ",
    },
    "ADU.200703.R": {
        "kty": "RSA", "e": 65537,
        "n": "ALKjsnQW-rsg-VJ25ic-gEHG_s8w-ciW9VkKqoHnUYOKxPUXOi8q5lfUcc6KPe-a"
             "VXY-meLCrkzuLbh49aJOKPKcTjllvOzkDeXjOKhZqwikG7T0oFKjOLNGIRPMPGgG"
             "3v4AppJu3kxHENYcnCT1zXDh9Wp8aBMd4cX2qE8hn4Z8RMWKmRzF0wabWnGdCRzD"
             "ZDFqxReVHV0q8VXHZtTo9dmpW4yibGJgBTfXMrBzy_dLNickIYw4CrgY_vUVYDWL"
             "Ne8eD4imE417fe-z57DJphxwe8zyKYuH972dtohvrHP_cvLvSCeWcoYGolzjfc6w"
             "nuXC2U7E8394B0tliEUMEeWWVjSILRYOWULS99ntHe3JN3dEfuOENp9YE-9v5MNE"
             "1HcGis9byIAcophlCzXcc8hp0F7oJUOe9tirBa9RKSNVQFgQ6rjizV15zOzftFuY"
             "x_rj0mwmzi4sVuDPje79kxIvAEmNHII4VqZdeURKGvPcFhCzwS0nEf4bmAXko2Ax"
             "mQ",
    },
}

FILE = "adu_roots.json"


def from_package(pkg):
    """(roots, disabled) from a root-key package (rootkeypackage.schema.json) or its "protected"
    part: rootKeys as roots; disabledRootKeys' kids and disabledSigningKeys' SHA256 hashes as the
    disabled set adu_verify.check takes. The package's own "signatures" are not checked here: the
    bundle that carries it is the trust anchor (it arrives over USB or a verified edgekit/trust:1)."""
    p = pkg.get("protected", pkg)
    roots = p.get("rootKeys")
    if not isinstance(roots, dict) or not roots:
        raise ValueError("root-key package has no rootKeys")
    disabled = set(k for k in p.get("disabledRootKeys") or () if isinstance(k, str))
    for h in p.get("disabledSigningKeys") or ():
        if isinstance(h, dict) and h.get("alg") == "SHA256" and isinstance(h.get("hash"), str):
            disabled.add(h["hash"])
    return roots, disabled


def load(bundle):
    """(roots, disabled) for a deployment: Microsoft's roots always, plus the rootKeys of the
    bundle's adu_roots.json when it has one (the local gateway's dev root that `edgekit bundle
    --adu-dev-root` writes, a root-key package's keys), whose disabled keys then apply."""
    try:
        f = open(bundle + "/" + FILE)
    except OSError:
        return MICROSOFT, set()
    with f:
        extra, disabled = from_package(json.load(f))
    roots = dict(MICROSOFT)
    roots.update(extra)
    return roots, disabled
