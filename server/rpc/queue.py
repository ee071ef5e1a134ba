"""Queue RPCs: Enqueue, Dequeue, Acknowledge, Nack, ExtendVisibility, ListDeadLetters,
RedriveDeadLetters, Consume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server import convert, validation
from server.generated.eventstreaming.v1 import event_streaming_pb2 as pb
from server.rpc.base import Context, RpcBase

#: gRPC ends a call's requests alike when the client half-closes and when its
#: connection breaks; a broken call is cancelled a moment later (about 0.2 ms on
#: loopback). Consume waits this long before it takes the end of the requests for
#: a half-close, which gives the held messages back at once; a broken call instead
#: leaves them to their leases.
HALF_CLOSE_GRACE_SECONDS = 0.05


async def _until_half_close(
    requests: AsyncIterator[pb.ConsumeRequest], context: Context
) -> AsyncIterator[pb.ConsumeRequest]:
    async for request in requests:
        yield request
    await asyncio.sleep(HALF_CLOSE_GRACE_SECONDS)  # a broken call is cancelled here
    if context.cancelled():
        raise asyncio.CancelledError


class QueueRpcs(RpcBase):
    async def Enqueue(self, request: pb.EnqueueRequest, context: Context) -> pb.EnqueueResponse:
        """Add messages to the end of a queue, atomically."""
        result = await self.store.enqueue(*validation.enqueue_request(request))
        return convert.enqueue_response(result)

    async def Dequeue(self, request: pb.DequeueRequest, context: Context) -> pb.DequeueResponse:
        """Lease visible messages, oldest first, waiting up to wait_time for one."""
        messages = await self.store.dequeue(*validation.dequeue_request(request))
        return convert.dequeue_response(messages)

    async def Acknowledge(
        self, request: pb.AcknowledgeRequest, context: Context
    ) -> pb.AcknowledgeResponse:
        """Delete held messages; the others are reported one by one."""
        result = await self.store.acknowledge(*validation.acknowledge_request(request))
        return convert.acknowledge_response(result)

    async def Nack(self, request: pb.NackRequest, context: Context) -> pb.NackResponse:
        """Give a held message back, visible again after delay."""
        await self.store.nack(*validation.nack_request(request))
        return pb.NackResponse()

    async def ExtendVisibility(
        self, request: pb.ExtendVisibilityRequest, context: Context
    ) -> pb.ExtendVisibilityResponse:
        """Set a held message's lease to end visibility_timeout from now."""
        visible_until = await self.store.extend_visibility(*validation.extend_request(request))
        return pb.ExtendVisibilityResponse(visible_until=convert.timestamp(visible_until))

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        """One page of the dead-letter queue, oldest first."""
        page = await self.store.list_dead_letters(*validation.dead_letters_request(request))
        return convert.dead_letters_response(page)

    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, context: Context
    ) -> pb.RedriveDeadLettersResponse:
        """Put some (or all) dead letters back at the end of the queue."""
        count = await self.store.redrive_dead_letters(*validation.redrive_request(request))
        return pb.RedriveDeadLettersResponse(redriven_count=count)

    async def Consume(
        self, requests: AsyncIterator[pb.ConsumeRequest], context: Context
    ) -> AsyncIterator[pb.ConsumeResponse]:
        """Push visible messages under flow control; answer acks, nacks and extends."""
        start, commands = await validation.consume_requests(_until_half_close(requests, context))
        async for item in self.consumers.consume(start, commands):
            yield convert.consume_response(item)
