"""What users test with (``pip install 'atlas-tasks[testing]'``): the provider and
token-storage conformance suites, the fake cloud and the local stack of ``atlas-tasks demo``.

Nothing outside this package and the demo imports it: a plain install runs callers and
workers without Starlette, uvicorn or pytest (tests/unit/test_packaging.py checks it).
"""
