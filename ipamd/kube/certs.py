"""The webhook's TLS: a private CA and a serving certificate, kept in a Secret, trusted by the API server.

The API server calls admission webhooks over HTTPS only and checks the certificate against the
``caBundle`` of the webhook configuration. Rather than make every operator install cert-manager or
run openssl, the controller looks after it: the first replica to start issues a CA and a serving
certificate and stores them in a Secret (create-if-absent, so racing replicas end up with one and the
same pair), every replica serves that pair and writes the CA into the configuration's ``caBundle``.
A certificate that is about to expire, or lacks a name it must answer to, is issued again.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)
CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TlsBundle:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(names: Sequence[str], now: dt.datetime) -> TlsBundle:
    """A new CA and a serving certificate for ``names`` (DNS names or IP addresses), signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plexus-webhook-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return TlsBundle(ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM),
                     key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def still_good(bundle: TlsBundle, names: Sequence[str], now: dt.datetime) -> bool:
    """Serve this pair on: it parses, answers to every name and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    has = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    has |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    return all(n in has for n in names) and cert.not_valid_after_utc - RENEW_BEFORE > now


def _from_secret(secret: Any) -> TlsBundle | None:
    data = secret.data or {}
    try:
        return TlsBundle(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))
    except (KeyError, ValueError):
        return None


def _secret_body(name: str, namespace: str, bundle: TlsBundle, resource_version: str = "") -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": namespace,
                          "labels": {"app.kubernetes.io/name": "plexus-controller", "app.kubernetes.io/part-of": "plexus"}}
    if resource_version:
        md["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "Secret", "metadata": md, "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in
                     (("ca.crt", bundle.ca_pem), ("tls.crt", bundle.cert_pem), ("tls.key", bundle.key_pem))}}


def ensure_secret(api: Any, namespace: str, name: str, names: Sequence[str]) -> TlsBundle:
    """The pair every replica serves: the Secret's when it is still good, else a new one stored there
    (create-if-absent, replace with the read resourceVersion: a replica that loses the race reads the
    winner's)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api)  # bodies as plain dicts, as the API takes them
    for _attempt in range(5):
        now = dt.datetime.now(dt.UTC)
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            secret = None
        current = _from_secret(secret) if secret is not None else None
        if current is not None and still_good(current, names, now):
            return current
        fresh = issue(names, now)
        try:
            if secret is None:
                core.create_namespaced_secret(namespace, _secret_body(name, namespace, fresh))
            else:
                core.replace_namespaced_secret(name, namespace,
                                               _secret_body(name, namespace, fresh, secret.metadata.resource_version))
            log.info("issued the webhook's serving certificate for %s (Secret %s/%s)", ", ".join(names), namespace, name)
            return fresh
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"Secret {namespace}/{name}: kept changing under us")


def publish_ca(api: Any, config_name: str, ca_pem: bytes) -> int:
    """Write the CA into each webhook of the ValidatingWebhookConfiguration ``config_name`` that does
    not have it yet; return how many were changed. A JSON patch that tests each webhook's name first,
    so a configuration edited meanwhile is never patched in the wrong place."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api)
    config = admission.read_validating_webhook_configuration(config_name)
    wanted = base64.b64encode(ca_pem).decode()
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(config.webhooks or []):
        have = hook.client_config.ca_bundle if hook.client_config else None
        if have != wanted:
            ops += [{"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name},
                    {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted}]
    if ops:
        admission.patch_validating_webhook_configuration(config_name, ops)
        log.info("wrote the webhook CA into ValidatingWebhookConfiguration %s", config_name)
    return len(ops) // 2
