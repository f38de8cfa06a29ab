"""What provenance costs per output: reading the scan's metadata, embedding ours, and signing C2PA.

    python bench/provenance_cost.py [--repeat 20] [--json PATH]

Makes two gray 1600x1200 scans that carry a scanner's metadata (EXIF make, model, date and
resolution, an XMP title, creator and rights): an 8-bit JPEG at quality 90 and a 16-bit TIFF.
For each, measured on one thread as CPU seconds per image (the median of REPEAT runs):

- **base**: what every output costs without provenance: decode, reduce to the model's input,
  merge a chroma at full resolution, encode (the model itself is left out: its cost does not
  depend on provenance);
- **read**: reading the scan's metadata (:func:`colorize.provenance.source_metadata`);
- **embed**: embedding the XMP provenance and the scan's metadata in the output;
- **sign**: signing a C2PA manifest into it, the scan as parent ingredient, with a throwaway
  ES256 certificate chain made here.

Printed per format: each cost in ms and as a share of base, and the bytes each step adds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import gray_scan  # noqa: E402
from colorize.c2pa_signing import load_signing_key, sign_c2pa  # noqa: E402
from colorize.color import merge_chroma  # noqa: E402
from colorize.engine import model_input  # noqa: E402
from colorize.imaging import decode_scan, encode_image  # noqa: E402
from colorize.provenance import ProvenanceInfo, SourceMetadata, embed, source_metadata  # noqa: E402

SIZE = (1600, 1200)
SCANNER_XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    '<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Harbour, 1921</rdf:li></rdf:Alt></dc:title>'
    "<dc:creator><rdf:Seq><rdf:li>Unknown photographer</rdf:li></rdf:Seq></dc:creator>"
    '<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">Public domain</rdf:li></rdf:Alt></dc:rights>'
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
)


def throwaway_chain(folder: Path) -> dict[str, Path]:
    """A C2PA-acceptable ES256 chain written under ``folder``: ``root`` (a CA), ``chain`` (a leaf
    with digitalSignature and the email-protection EKU, then the root), ``no_eku`` (a leaf without
    an extended key usage, which C2PA refuses, then the root) and ``key`` (the leaves' key, PKCS#8)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "T")]
        )

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, leaf: bool, eku: bool = True
    ):
        now = dt.datetime.now(dt.UTC)
        unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer.subject if issuer else name(subject))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=not leaf, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=leaf,
                    key_cert_sign=not leaf,
                    crl_sign=not leaf,
                    encipher_only=False,
                    decipher_only=False,
                    **dict.fromkeys(unused, False),
                ),
                critical=True,
            )  # fmt: skip
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
            )
        if leaf and eku:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
            )
        return builder.sign(root_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_pem = cert("Test Root CA", root_key, None, leaf=False)
    root = x509.load_pem_x509_certificate(root_pem)
    files = {
        "root": root_pem,
        "chain": cert("Test Archive Signer", leaf_key, root, leaf=True) + root_pem,
        "no_eku": cert("No EKU", leaf_key, root, leaf=True, eku=False) + root_pem,
        "key": leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / f"{kind}.pem" for kind in files}
    for kind, data in files.items():
        paths[kind].write_bytes(data)
    return paths


def scanner_file(fmt: str) -> bytes:
    """A 1600x1200 gray scan as a scanner writes it: EXIF and XMP included."""
    bits = 16 if fmt == "TIFF" else 8
    gray = gray_scan(SIZE, seed=1, bits=bits)
    img = Image.fromarray(gray)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0132] = "Epson", "Expression 12000XL", "2026:11:27 06:00:00"
    buf = io.BytesIO()
    options: dict[str, object] = {"quality": 90} if fmt == "JPEG" else {"compression": "tiff_adobe_deflate"}
    img.save(buf, fmt, exif=exif, xmp=SCANNER_XMP.encode(), dpi=(600, 600), **options)
    return buf.getvalue()


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU milliseconds of one call."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def measure(fmt: str, repeat: int, certs: dict[str, Path]) -> dict[str, float]:
    scan_bytes = scanner_file(fmt)
    key = load_signing_key(str(certs["chain"]), str(certs["key"]))
    info = ProvenanceInfo("file:///archive/scans/harbour", "0" * 64, "bench@000000000000", "0" * 64, "bench-run")
    rng = np.random.default_rng(0)
    ab = rng.uniform(-30, 30, (256, 256, 2)).astype(np.float32)

    def base() -> bytes:
        scan = decode_scan(scan_bytes)
        small = model_input(scan.gray)
        return encode_image(merge_chroma(scan.gray, ab, small), fmt, scan.dpi)

    def read() -> SourceMetadata:
        return source_metadata(scan_bytes, info.source_uri)

    def embedding() -> bytes:
        return embed(encoded, fmt, meta, info, [])

    def signing() -> bytes:
        return sign_c2pa(embedded, fmt, info, key, source=scan_bytes, source_format=fmt, title="harbour")

    encoded = base()
    meta = read()
    embedded = embedding()
    signed = signing()
    steps = {"base": base, "read": read, "embed": embedding, "sign": signing}
    return {
        "scan_bytes": len(scan_bytes),
        **{f"{step}_ms": cpu_ms(fn, repeat) for step, fn in steps.items()},
        "output_bytes": len(encoded),
        "embed_added_bytes": len(embedded) - len(encoded),
        "sign_added_bytes": len(signed) - len(embedded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one output's cost, on one core, as each pipeline worker spends it
    with tempfile.TemporaryDirectory() as tmp:
        certs = throwaway_chain(Path(tmp))
        results = {fmt: measure(fmt, args.repeat, certs) for fmt in ("JPEG", "TIFF")}
    for fmt, r in results.items():
        base = r["base_ms"]
        print(
            f"{fmt} 1600x1200 ({r['scan_bytes'] / 1e6:.2f} MB scan, {r['output_bytes'] / 1e6:.2f} MB output): "
            f"base {base:.1f} ms CPU"
        )
        for step in ("read", "embed", "sign"):
            added = f", +{r[f'{step}_added_bytes'] / 1e3:.1f} KB" if f"{step}_added_bytes" in r else ""
            print(f"  {step:5s} {r[f'{step}_ms']:6.2f} ms  {r[f'{step}_ms'] / base:6.1%} of base{added}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
