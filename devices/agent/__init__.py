"""The reference device agent: speaks only the public device API; stdlib + `cryptography` + python-tuf, no Django.

Run it with `python -m devices.agent --state-dir DIR --server URL --serial S --secret X`. The same state machine
runs on a blocking transport (`HttpTransport`, `Agent.run`) or on asyncio (`AsyncHttpTransport`, `Agent.arun`).
"""

from devices.agent.agent import Agent, PowerLoss
from devices.agent.aio import AsyncHttpTransport
from devices.agent.transport import HttpTransport, TransportError
from devices.agent.verify import Trust

__all__ = ["Agent", "AsyncHttpTransport", "HttpTransport", "PowerLoss", "TransportError", "Trust"]
