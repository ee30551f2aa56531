#!/usr/bin/env python3
"""Read labelqc's compacted quality topics into pandas DataFrames, tombstones applied.

Each topic is read from the beginning of every partition to the end it had when reading began;
the latest message per key wins, and a key whose latest message is a tombstone (a null value) is
dropped, which is what the topic holds once Kafka has compacted it. Keys are compared as the
message's key bytes, whatever their format (`project/task` or a JSON array such as
`["project","task"]`). Each topic becomes one DataFrame: one row per live key, a `key` column
(the key as text) and one column per field of the JSON values, nested objects flattened with
`.` (`agreement.krippendorff_alpha`).

Needs confluent-kafka and pandas (`pip install confluent-kafka pandas`).

Command line:
    python examples/read_topics.py --brokers HOST:PORT [--topic scopes --topic annotators ...]
        [--prefix labelqc.] [--client security.protocol=sasl_ssl ...] [--format summary|csv|json]
        [--out DIR]

    summary (the default) prints each topic's size and first rows; csv writes DIR/<topic>.csv;
    json prints {topic: {"columns": [...], "rows": {key: {column: value}}}} on standard output.
    The SASL password can come from the environment as LABELQC_KAFKA__CLIENT__SASL_PASSWORD, as
    for labelqc itself (any LABELQC_KAFKA__CLIENT__<NAME> sets the librdkafka property <name>).

As a library:
    from read_topics import read_topics
    frames = read_topics("127.0.0.1:9092")          # {"scopes": DataFrame, ...}
    frames["annotators"].sort_values("gold.accuracy")
"""

import argparse
import json
import os
import sys
import time
import uuid

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

# The output topics of `labelqc run` (spec section 4), by their names in [outputs].
TOPICS = ["scopes", "annotators", "pairs", "items", "scope_windows", "gating", "alerts", "deadletter",
          "leaderboard", "routing"]
CLIENT_PREFIX = "LABELQC_KAFKA__CLIENT__"


def client_settings_from_env(environ=os.environ):
    """librdkafka settings from LABELQC_KAFKA__CLIENT__<NAME> variables, as labelqc reads them."""
    return {
        name[len(CLIENT_PREFIX):].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(CLIENT_PREFIX) and len(name) > len(CLIENT_PREFIX)
    }


def read_compacted(brokers, topic, client=None, timeout=60.0):
    """The latest value of every live key of `topic`: {key bytes: value bytes}, tombstones applied.

    Reads each partition from its beginning to the high watermark it had when reading began.
    Raises KafkaException if the topic does not exist, TimeoutError if the end is not reached
    within `timeout` seconds.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"read-topics-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **(client or {}),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise KafkaException(f"topic {topic} does not exist on {brokers}")
        ends = {}
        for partition in described.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            if high > low:
                ends[partition] = high
        latest = {}
        if not ends:
            return latest
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end; partitions left: {sorted(ends)}")
            message = consumer.poll(0.5)
            if message is None:
                # A transaction's commit marker can be a partition's last offset: done once the
                # position has passed the end.
                for position in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if position.offset >= ends[position.partition]:
                        del ends[position.partition]
                continue
            if message.error():
                raise KafkaException(message.error())
            partition = message.partition()
            if partition not in ends or message.offset() >= ends[partition]:
                continue
            key = message.key() or b""
            if message.value() is None:
                latest.pop(key, None)
            else:
                latest[key] = message.value()
            if message.offset() + 1 >= ends[partition]:
                del ends[partition]
        return latest
    finally:
        consumer.close()


def to_frame(records):
    """One row per key: `key` (the key as text), then the JSON value's fields, flattened with '.'."""
    keys = sorted(records)
    values = [json.loads(records[key]) for key in keys]
    frame = pd.json_normalize(values, sep=".") if values else pd.DataFrame()
    frame.insert(0, "key", [key.decode("utf-8", errors="backslashreplace") for key in keys])
    return frame


def read_topics(brokers, topics=None, prefix="labelqc.", client=None, timeout=60.0):
    """{short name: DataFrame} of each topic (default: every output topic of labelqc run).

    A name that starts with `prefix`, or holds a '.', is taken as the topic's full name.
    """
    frames = {}
    for name in topics or TOPICS:
        topic = name if name.startswith(prefix) or "." in name else prefix + name
        short = topic[len(prefix):] if topic.startswith(prefix) else topic
        frames[short] = to_frame(read_compacted(brokers, topic, client, timeout))
    return frames


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=os.environ.get("LABELQC_BROKERS", "127.0.0.1:9092"),
                        help="bootstrap brokers (default: $LABELQC_BROKERS or 127.0.0.1:9092)")
    parser.add_argument("--topic", action="append", dest="topics", metavar="NAME",
                        help=f"a topic to read (repeatable; default: {', '.join(TOPICS)})")
    parser.add_argument("--prefix", default="labelqc.", help="prefix of the short names (default: labelqc.)")
    parser.add_argument("--client", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka setting (repeatable), e.g. security.protocol=sasl_ssl")
    parser.add_argument("--format", choices=["summary", "csv", "json"], default="summary")
    parser.add_argument("--out", default=".", help="folder of the CSV files (--format csv)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to reach each topic's end")
    args = parser.parse_args(argv)

    client = client_settings_from_env()
    for setting in args.client:
        key, sep, value = setting.partition("=")
        if not sep:
            parser.error(f"--client {setting!r}: write KEY=VALUE")
        client[key] = value
    try:
        frames = read_topics(args.brokers, args.topics, args.prefix, client, args.timeout)
    except (KafkaException, TimeoutError) as error:
        print(f"read_topics: {error}", file=sys.stderr)
        return 1

    if args.format == "json":
        out = {}
        for name, frame in frames.items():
            rows = json.loads(frame.set_index("key").to_json(orient="index", double_precision=15)) if len(frame) else {}
            out[name] = {"columns": [c for c in frame.columns if c != "key"], "rows": rows}
        json.dump(out, sys.stdout)
        print()
    elif args.format == "csv":
        os.makedirs(args.out, exist_ok=True)
        for name, frame in frames.items():
            path = os.path.join(args.out, f"{name}.csv")
            frame.to_csv(path, index=False)
            print(f"{path}: {len(frame)} rows")
    else:
        with pd.option_context("display.width", 120, "display.max_columns", 8):
            for name, frame in frames.items():
                print(f"== {name}: {len(frame)} rows x {max(len(frame.columns) - 1, 0)} fields")
                if len(frame):
                    print(frame.head(5).to_string(index=False, max_colwidth=24))
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
