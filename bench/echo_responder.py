"""The RPC baseline's responder: republish every message of one channel on another.

``python -m bench.echo_responder URL REQUEST_CHANNEL REPLY_CHANNEL [--mode async|sync]``

``async`` is built like procmond's bus (redis.asyncio, a reader on the pub/sub
connection, PUBLISH on a command connection), so the difference to procmond
is procmond's own work per request; ``sync`` is plain blocking redis-py, the
cheapest responder Python offers. It prints ``ready`` once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio

import redis
from redis.asyncio import Redis as AsyncRedis


async def _serve_async(url: str, channel: str, reply: str) -> None:
    client = AsyncRedis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    print("ready", flush=True)
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        if message is not None and message["type"] in (b"message", "message"):
            await client.publish(reply, message["data"])


def _serve_sync(url: str, channel: str, reply: str) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]  # redis-py: unannotated
    pubsub.subscribe(channel)
    print("ready", flush=True)
    for message in pubsub.listen():
        if message["type"] in (b"message", "message"):
            client.publish(reply, message["data"])


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("channel")
    parser.add_argument("reply")
    parser.add_argument("--mode", choices=("async", "sync"), default="async")
    args = parser.parse_args()
    try:
        if args.mode == "async":
            asyncio.run(_serve_async(args.url, args.channel, args.reply))
        else:
            _serve_sync(args.url, args.channel, args.reply)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
