"""The one root of the exceptions Riverdelta defines.

The rule: every exception class defined in the ``riverdelta`` package derives
from ``RiverdeltaError`` and also keeps the builtin base that says what kind of
failure it is, listed after it::

    class BackfillRefused(RiverdeltaError, ValueError): ...   # a refused request
    class BrokerError(RiverdeltaError, RuntimeError): ...     # the world failed

So a caller can catch whatever Riverdelta raises on purpose with one
``except RiverdeltaError`` (and tell it apart from a bug: a ``KeyError`` or a
``TypeError`` raised by accident is not one), while every existing
``except ValueError`` / ``except RuntimeError`` keeps working. This module
imports nothing, so any module can import it. tests/unit/test_errors.py holds
the rule for every module of the package.
"""

from __future__ import annotations


class RiverdeltaError(Exception):
    """Base of every exception class defined in riverdelta."""
