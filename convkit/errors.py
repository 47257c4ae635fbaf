"""The one error type a user can cause, and its one-line rendering.

`quant` and `tokenizers_impl` depend on numpy only, so each has its own error class;
the CLI treats all three the same way: one line on stderr, exit code 2.
"""
from quant.errors import QuantError
from tokenizers_impl.errors import TokenizerError


class ConvkitError(Exception):
    """A problem with the user's input: the message names the file and the fix."""


USER_ERRORS = (ConvkitError, QuantError, TokenizerError)
