"""What the tests (``api_tests/``) and the benchmarks (``benchmarks/``) both use; neither
imports from the other. Not part of the installed product.

- ``servers``: a throw-away PostgreSQL and SeaweedFS S3 server, as processes in temp dirs;
- ``models``: ``ResidualNet``, a small BatchNorm + residual CNN (what shrink follows);
- ``uploads``: a large streamed multipart upload and what it costs the server;
- ``digits``: scikit-learn's digits as a dataset file, and a small CNN for them.
"""
