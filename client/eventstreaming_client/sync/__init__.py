"""The blocking client."""

from eventstreaming_client.sync.client import Client
from eventstreaming_client.sync.consume import ConsumeStream
from eventstreaming_client.sync.session import AppendSession
from eventstreaming_client.sync.subscription import Subscription
from eventstreaming_client.sync.worker import Handler, Worker

__all__ = ["AppendSession", "Client", "ConsumeStream", "Handler", "Subscription", "Worker"]
