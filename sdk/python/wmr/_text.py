"""Text helpers for jobs over text input."""

import re

from ._alphabet import ALPHABETIC

_ASCII_WORD = re.compile("[A-Za-z]+")
_WORD = re.compile(ALPHABETIC + "+")


def words(text):
    """The words of ``text``: maximal runs of letters (Unicode's Alphabetic
    property, exactly as the Rust SDK's ``words`` sees it), case kept as is.

    >>> words("It's a café, Ñandú!")
    ['It', 's', 'a', 'café', 'Ñandú']
    """
    # str.isascii is a flag check in CPython, and the ASCII class is faster.
    return (_ASCII_WORD if text.isascii() else _WORD).findall(text)
