"""Test harness for tchap-visio's integration tests.

Real components only: a Synapse homeserver from the venv, the tchap-visio binary
built by cargo (never built from here: see TCHAP_VISIO_BIN), matrix-nio clients.
"""

from .util import ROOT, free_port, wait_for  # noqa: F401
from .synapse import Synapse  # noqa: F401
from .service import Service  # noqa: F401
from .matrix import MatrixUser  # noqa: F401
from .env import Env  # noqa: F401
