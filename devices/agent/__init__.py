"""The reference device agent: speaks only the public device API; stdlib + `cryptography`, no Django.

Run it with `python -m devices.agent --state-dir DIR --server URL --serial S --secret X`.
"""

from devices.agent.agent import Agent, PowerLoss
from devices.agent.transport import HttpTransport, TransportError

__all__ = ["Agent", "HttpTransport", "PowerLoss", "TransportError"]
