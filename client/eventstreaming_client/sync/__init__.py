"""The blocking client."""

from eventstreaming_client.sync.client import Client
from eventstreaming_client.sync.subscription import Subscription
from eventstreaming_client.sync.worker import Handler, Worker

__all__ = ["Client", "Handler", "Subscription", "Worker"]
