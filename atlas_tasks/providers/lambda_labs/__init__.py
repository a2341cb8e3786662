"""Lambda Labs (Lambda Cloud) provider: facade in :mod:`.provider`, HTTP client in
:mod:`.client`, pure wire translation in :mod:`.translate`."""

from atlas_tasks.providers.lambda_labs.provider import LambdaLabsProvider

__all__ = ["LambdaLabsProvider"]
