"""The key Graph encrypts Teams meeting notifications to, and the decryption of their resource data.

Graph's rich notifications (changeNotificationEncryptedContent) carry:
- dataKey: a random symmetric key, encrypted to the public key of the certificate we gave when subscribing,
  with RSA/ECB/OAEPWithSHA1AndMGF1Padding;
- dataSignature: base64 HMAC-SHA256, keyed with that symmetric key, over the encrypted data (its bytes);
- data: the resource as JSON, AES/CBC/PKCS5Padding (PKCS7 on 16-byte blocks) under the symmetric key, whose
  first 16 bytes are the initialisation vector.
The signature is checked before anything is decrypted. The certificate is self-signed and made from the key at
start-up: Graph only uses its public key, and every gateway process made from the same key decrypts alike.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError


class NotificationRejected(Exception):
    """An encrypted notification we will not use; `outcome` says why (bad_signature, undecryptable, malformed)."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class NotificationKey:
    """Our RSA key for Graph's notifications and the certificate that names it."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._key = private_key
        public_der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
        # The id names the key, not the certificate: processes make their own certificates of the one key.
        self.certificate_id = "vg-" + hashlib.sha256(public_der).hexdigest()[:32]
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Visitgate Graph notifications")])
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(private_key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=730))
                       .sign(private_key, hashes.SHA256()))
        self.certificate_b64 = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()

    @classmethod
    def from_pem(cls, pem: bytes) -> NotificationKey:
        """The key from a PEM file's bytes; anything but an RSA key of 2048 bits or more stops start-up."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("VISITGATE_GRAPH_NOTIFICATION_KEY_FILE must hold a PEM private key") from exc
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            raise ConfigError("VISITGATE_GRAPH_NOTIFICATION_KEY_FILE must hold an RSA key of at least 2048 bits")
        return cls(key)

    def decrypt(self, content: Any) -> dict[str, Any]:
        """The resource of an encryptedContent object, after its signature was verified; raises NotificationRejected."""
        if not isinstance(content, dict):
            raise NotificationRejected("malformed")
        if content.get("encryptionCertificateId") != self.certificate_id:
            raise NotificationRejected("undecryptable")
        try:
            data = base64.b64decode(content["data"], validate=True)
            wrapped = base64.b64decode(content["dataKey"], validate=True)
            signature = base64.b64decode(content["dataSignature"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise NotificationRejected("malformed") from None
        try:
            key = self._key.decrypt(wrapped, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()),
                                                               algorithm=hashes.SHA1(), label=None))
        except ValueError:
            raise NotificationRejected("undecryptable") from None
        if len(key) not in (16, 24, 32):
            raise NotificationRejected("undecryptable")
        if not hmac.compare_digest(hmac.new(key, data, hashlib.sha256).digest(), signature):
            raise NotificationRejected("bad_signature")
        try:
            decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
            padded = decryptor.update(data) + decryptor.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            plain = unpadder.update(padded) + unpadder.finalize()
            resource = json.loads(plain.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise NotificationRejected("undecryptable") from None
        if not isinstance(resource, dict):
            raise NotificationRejected("malformed")
        return resource
