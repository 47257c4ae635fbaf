"""Progress bars that show on a terminal and stay silent when piped or --quiet."""
import sys

from tqdm import tqdm


def progress(iterable=None, *, quiet=False, **kwargs):
    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)
