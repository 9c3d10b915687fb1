# Test keys and tokens for the identity tests (PyJWT + cryptography).
#   mint.py keys DIR              RSA keys rsa1, rsa2 and an EC P-256 key ec1 (PEM in DIR)
#   mint.py jwks DIR KID...       DIR/jwks.json with the public keys KID...
#   mint.py token DIR KIND ISS AUD SUB [GROUP...]   print a token of KIND:
#     rsa, ec (valid), expired, nbf, unknown-kid (signed by rsa2), none (alg none),
#     hs256-pubkey (HMAC keyed with rsa1's public key), tampered (payload changed after
#     signing), string-exp ("exp": "never"), garbage, oversize
import base64
import hashlib
import hmac
import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private(dir, kid):
    with open(os.path.join(dir, kid + ".pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def keys(dir):
    for kid in ("rsa1", "rsa2"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write(dir, kid, key)
    write(dir, "ec1", ec.generate_private_key(ec.SECP256R1()))


def write(dir, kid, key):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with open(os.path.join(dir, kid + ".pem"), "wb") as f:
        f.write(pem)


def jwks(dir, kids):
    out = []
    for kid in kids:
        key = private(dir, kid).public_key()
        if kid.startswith("ec"):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
            jwk["alg"] = "ES256"
        else:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
            jwk["alg"] = "RS256"
        jwk["kid"] = kid
        jwk["use"] = "sig"
        out.append(jwk)
    tmp = os.path.join(dir, "jwks.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"keys": out}, f)
    os.replace(tmp, os.path.join(dir, "jwks.json"))


def token(dir, kind, iss, aud, sub, groups):
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + 600, "groups": groups}
    if kind == "expired":
        claims["exp"] = now - 3600
    if kind == "nbf":
        claims["nbf"] = now + 3600
    if kind == "string-exp":
        claims["exp"] = "never"
    if kind == "oversize":
        claims["padding"] = "x" * 10000
    if kind == "garbage":
        return "this.is-not-a.jwt"
    if kind == "none":
        return b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa1"}).encode()) + "." + \
            b64(json.dumps(claims).encode()) + "."
    if kind == "hs256-pubkey":
        public = private(dir, "rsa1").public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode()) + "." + \
            b64(json.dumps(claims).encode())
        return signing + "." + b64(hmac.new(public, signing.encode(), hashlib.sha256).digest())
    if kind == "ec":
        return jwt.encode(claims, private(dir, "ec1"), algorithm="ES256", headers={"kid": "ec1"})
    kid = "rsa2" if kind == "unknown-kid" else "rsa1"
    signed = jwt.encode(claims, private(dir, kid), algorithm="RS256", headers={"kid": kid})
    if kind == "tampered":
        header, _, signature = signed.split(".")
        claims["sub"] = "someone-else"
        return header + "." + b64(json.dumps(claims).encode()) + "." + signature
    return signed


command, dir = sys.argv[1], sys.argv[2]
if command == "keys":
    keys(dir)
elif command == "jwks":
    jwks(dir, sys.argv[3:])
elif command == "token":
    print(token(dir, sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:]))
