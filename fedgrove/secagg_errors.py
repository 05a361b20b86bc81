"""The one error of secure aggregation, apart so that its key, encoding and masking modules share it.

SecureAggregationError(ValueError) is raised for every refusal: a bad key exchange, a value outside the
fixed-point range, a wrong number of sites, or an aggregate whose masked checksum does not match (the masks
did not cancel). Its message says what was expected, what came, and what to do; it never holds a secret.
"""

from __future__ import annotations


class SecureAggregationError(ValueError):
    """Secure aggregation cannot go on: the message says what was expected, what came and the fix."""
