"""edge-daq: a data-acquisition daemon for reliability-test labs."""

__version__ = "0.1.0"
