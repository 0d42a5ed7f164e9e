"""The signature algorithms the gateway knows, as one table. Every other module asks this table for the COSE
label, the JWK members, the key and signature sizes and the key classes; none spells them itself.

There is one row today: Ed25519 (RFC 8032), COSE ``alg`` -8 "EdDSA" (RFC 9053 section 2.2), JWK ``kty`` "OKP",
``crv`` "Ed25519", ``alg`` "EdDSA" (RFC 8037). A second row (say Ed448, or ML-DSA once COSE assigns it) would be
the place to start; the wire format stays as it is until ``docs/wire-format.md`` says otherwise.
"""

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class Algorithm:
    name: str               # how people and error messages call it
    cose_alg: int           # the COSE "alg" label value in the protected header
    cose_name: str          # the name of that COSE algorithm
    jwk_kty: str            # JWK key type (RFC 8037)
    jwk_crv: str            # JWK curve
    jwk_alg: str            # JWK "alg" member
    public_bytes: int       # raw public key (JWK "x")
    seed_bytes: int         # raw private key (the seed of a test vector)
    signature_bytes: int    # one signature
    private_class: type     # the cryptography class of a private key
    public_class: type      # ... and of a public key

    def thumbprint_json(self, x):
        """RFC 7638: the canonical JSON of the required members, ``x`` already base64url."""
        return '{"crv":"%s","kty":"%s","x":"%s"}' % (self.jwk_crv, self.jwk_kty, x)


ED25519 = Algorithm(name="Ed25519", cose_alg=-8, cose_name="EdDSA", jwk_kty="OKP", jwk_crv="Ed25519",
                    jwk_alg="EdDSA", public_bytes=32, seed_bytes=32, signature_bytes=64,
                    private_class=Ed25519PrivateKey, public_class=Ed25519PublicKey)

#: name -> algorithm: the table
ALGORITHMS = {a.name: a for a in (ED25519,)}
#: the COSE alg label -> algorithm (what a verifier looks up)
BY_COSE_ALG = {a.cose_alg: a for a in ALGORITHMS.values()}
#: the algorithm the gateway signs with and the backend trusts
SIGNING = ED25519
