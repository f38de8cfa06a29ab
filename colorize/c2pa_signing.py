"""C2PA Content Credentials: load and check a signing key, and sign a manifest into an output.

The manifest holds a ``c2pa.edited`` action of the IPTC digital source type
``compositeWithTrainedAlgorithmicMedia`` and the scan as its parent ingredient, so a C2PA reader
shows both that a machine coloured the picture and from what. c2pa-python is an optional extra
(``archive-colorize[c2pa]``); only signing and reading signatures need it.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

from colorize.imaging import FORMATS, content_type
from colorize.provenance import DIGITAL_SOURCE_TYPE, UNSIGNED_FORMATS, ProvenanceError, ProvenanceInfo
from colorize.storage import read_uri

C2PA_ASSERTION = "example.archive-colorize.provenance"  # entity-specific label: reverse domain of NS_COLORIZE
# The formats c2pa-python reads (as ingredients, or to verify); it writes manifests into those not
# in UNSIGNED_FORMATS.
C2PA_MIME = {fmt: content_type(fmt) for fmt in FORMATS if fmt != "JPEG2000"}


def c2pa_module() -> Any:
    try:
        import c2pa
    except ImportError as err:
        raise ProvenanceError(f"signing needs c2pa-python ({err}): pip install 'archive-colorize[c2pa]'") from None
    return c2pa


# Extended key usages a C2PA signing certificate may carry (C2PA 2.x, as c2pa-rs lists them):
# emailProtection, documentSigning, timeStamping, OCSPSigning, Microsoft's and C2PA's claim signing.
# The SDK's default accepts fewer (documentSigning and claim signing are refused by c2pa-python
# 0.38), so the list is given explicitly, for signing and for reading alike.
C2PA_EKUS = (
    "1.3.6.1.5.5.7.3.4", "1.3.6.1.5.5.7.3.36", "1.3.6.1.5.5.7.3.8", "1.3.6.1.5.5.7.3.9",
    "1.3.6.1.4.1.311.76.59.1.9", "1.3.6.1.4.1.62558.2.1",
)  # fmt: skip
# Offline and deterministic: no remote manifests, no OCSP, no thumbnails (a thumbnail of every
# output would cost a decode + encode for a picture the file already is).
C2PA_SETTINGS: dict[str, Any] = {
    "builder": {"intent": "edit", "thumbnail": {"enabled": False}},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "trust": {"trust_config": "\n".join(C2PA_EKUS)},
}


@dataclass(frozen=True)
class SigningKey:
    """A C2PA signing certificate chain (PEM, leaf first) and its private key (PEM)."""

    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    alg: str  # a c2pa.C2paSigningAlg name: ES256, ES384, ES512, PS256, ED25519


def _private_key(key_pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ProvenanceError("the signing key is encrypted: give an unencrypted PEM key (keep it secret)") from None
    except ValueError as err:
        raise ProvenanceError(f"the signing key is not a PEM private key: {err}") from None


def _signing_alg(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in algs:
            return algs[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    raise ProvenanceError(f"C2PA cannot sign with a {type(key).__name__} key: use EC P-256/384/521, Ed25519 or RSA")


def _check_certificate(chain_pem: bytes, key: Any) -> None:
    """Name the usual faults of a signing certificate plainly (the SDK says only "invalid").

    The leaf (first certificate of the chain) must belong to the key, be an end-entity certificate
    in its validity period, allow digitalSignature, and carry one of :data:`C2PA_EKUS`.
    """
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as err:
        raise ProvenanceError(f"the signing certificate is not a PEM certificate chain: {err}") from None
    raw = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ProvenanceError("the signing key does not belong to the first certificate of the chain (the leaf)")
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ProvenanceError(f"the signing certificate is not valid now (valid until {leaf.not_valid_after_utc})")
    problems = []
    basic = _extension(leaf, x509.BasicConstraints)
    if basic is not None and basic.ca:
        problems.append("it is a CA certificate; sign with an end-entity certificate issued by the CA")
    usage = _extension(leaf, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        problems.append("its key usage lacks digitalSignature")
    ekus = _extension(leaf, x509.ExtendedKeyUsage)
    if ekus is None or not {oid.dotted_string for oid in ekus} & set(C2PA_EKUS):
        problems.append("its extended key usage has none of emailProtection, documentSigning or C2PA claim signing")
    if problems:
        raise ProvenanceError("the signing certificate cannot sign C2PA manifests: " + "; ".join(problems))


def _extension(cert: Any, kind: type) -> Any:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def load_signing_key(cert_uri: str, key_uri: str, endpoint_url: str | None = None) -> SigningKey:
    """Read a certificate chain and key (paths or ``s3://`` URIs) and check that C2PA can sign with them.

    Raises:
        ProvenanceError: c2pa-python missing, a file missing, or a certificate C2PA refuses (no
            digitalSignature key usage, no accepted extended key usage, a key of another
            certificate, expired...), with the reason.
    """
    c2pa_module()
    try:
        cert, key_pem = read_uri(cert_uri, endpoint_url), read_uri(key_uri, endpoint_url)
    except FileNotFoundError as err:
        raise ProvenanceError(f"signing certificate or key not found: {err}") from None
    key = _private_key(key_pem)
    _check_certificate(cert, key)
    signing = SigningKey(cert, key_pem, _signing_alg(key))
    _check_signing(signing)
    return signing


def _check_signing(key: SigningKey) -> None:
    """Sign a tiny image once, so that a bad certificate stops the run at its start, not per file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 100, 80)).save(buf, "PNG")
    info = ProvenanceInfo("check", "0" * 64, "check", "0" * 64, "check")
    try:
        sign_c2pa(buf.getvalue(), "PNG", info, key, source=buf.getvalue(), source_format="PNG", title="check.png")
    except Exception as err:  # noqa: BLE001 - the SDK's own error types; its message says what is wrong
        raise ProvenanceError(f"C2PA refuses to sign with this certificate and key: {err}") from None


def c2pa_manifest_definition(info: ProvenanceInfo, title: str) -> dict[str, Any]:
    """The manifest: a ``c2pa.edited`` action (the builder's ``edit`` intent adds ``c2pa.opened``
    of the parent first, as C2PA 2 requires) with the IPTC digital source type, and our fields."""
    agent = {"name": info.software, "version": info.software_version}
    action = {
        "action": "c2pa.edited",
        "digitalSourceType": DIGITAL_SOURCE_TYPE,
        "softwareAgent": agent,
        "description": info.description,
        "parameters": {"model_id": info.model_id, "model_sha256": info.model_sha256},
    }
    return {
        "claim_generator_info": [agent],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [action]}},
            {"label": C2PA_ASSERTION, "data": asdict(info)},
        ],
    }


def _ingredient(info: ProvenanceInfo, source_format: str) -> dict[str, Any]:
    # C2PA v3 ingredients hash only ingredients that have their own manifest: the scan's sha256 is
    # recorded in the ingredient's metadata so that it identifies the scan by content.
    return {
        "title": info.source_uri.rstrip("/").rpartition("/")[2] or info.source_uri,
        "relationship": "parentOf",
        "format": content_type(source_format),
        "metadata": {C2PA_ASSERTION: {"uri": info.source_uri, "sha256": info.source_sha256}},
    }


def sign_c2pa(
    output: bytes, fmt: str, info: ProvenanceInfo, key: SigningKey, *, source: bytes, source_format: str, title: str
) -> bytes:
    """The output with a signed C2PA manifest embedded (after :func:`embed`: it hashes the final bytes).

    The scan is added as the parent ingredient from its bytes, so a scan that has Content Credentials
    of its own (a signing scanner) keeps its chain.

    Raises:
        ProvenanceError: the format has no C2PA binding (BMP, JPEG 2000), or c2pa-python is missing.
        c2pa.C2paError: the SDK could not sign.
    """
    c2pa = c2pa_module()
    if fmt in UNSIGNED_FORMATS:
        raise ProvenanceError(f"{fmt} cannot carry a C2PA manifest")
    signed = io.BytesIO()
    definition, ingredient = c2pa_manifest_definition(info, title), _ingredient(info, source_format)
    if source_format not in C2PA_MIME:  # a JPEG 2000 scan: named by its URI and sha256 alone
        definition["ingredients"] = [ingredient]
    with c2pa.Context.from_dict(C2PA_SETTINGS) as context:
        builder = c2pa.Builder(definition, context=context)
        if source_format in C2PA_MIME:
            builder.add_ingredient(ingredient, C2PA_MIME[source_format], io.BytesIO(source))
        signer_info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg[key.alg], key.cert_chain, key.private_key, None)
        with c2pa.Signer.from_info(signer_info) as signer:
            builder.sign(signer, C2PA_MIME[fmt], io.BytesIO(output), signed)
    return signed.getvalue()
