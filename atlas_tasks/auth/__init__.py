"""Auth primitives: bearer tokens, S3-style signed URLs and the pod-side middleware."""

from atlas_tasks.auth.middleware import (
    BearerOrSignedUrlMiddleware,
    PodAuthenticator,
    WSGIBearerOrSignedUrlMiddleware,
)
from atlas_tasks.auth.signed_url import (
    InvalidSignedUrl,
    sign_url,
    verify_request_target,
    verify_url,
)
from atlas_tasks.auth.tokens import (
    MintedToken,
    mint_token,
    new_signing_secret,
    signing_env,
    token_from_raw,
    token_hash,
    token_valid,
)

__all__ = [
    "BearerOrSignedUrlMiddleware",
    "InvalidSignedUrl",
    "MintedToken",
    "PodAuthenticator",
    "WSGIBearerOrSignedUrlMiddleware",
    "mint_token",
    "new_signing_secret",
    "sign_url",
    "signing_env",
    "token_from_raw",
    "token_hash",
    "token_valid",
    "verify_request_target",
    "verify_url",
]
