"""A commit sent while the group has forgotten the member (pipeline/worker/faust_fixes.py, 10.),
against the real broker: aiokafka sends it as a standalone commit of generation -1, and the broker
takes it; with the workaround it is never sent. The broker-killed drill lost the resent datums below
such a commit (the rejoin seeked there)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.structs import TopicPartition
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as ConfluentTP

from pipeline.settings import Settings
from pipeline.wire.producer import TopicAdmin
from pipeline.worker import faust_fixes

pytestmark = pytest.mark.integration


def _committed(bootstrap: str, topic: str, group: str) -> int:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        (tp,) = reader.committed([ConfluentTP(topic, 0)], timeout=30)
        return int(tp.offset)
    finally:
        reader.close()


async def _commit_after_the_group_forgot(bootstrap: str, topic: str, group: str) -> BaseException | None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n in range(12):
            await producer.send_and_wait(topic, f"m{n}".encode(), partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for _ in range(120):  # until the group has assigned the partition and something was read
            if (await consumer.getmany(timeout_ms=500)) and consumer.assignment():
                break
        tp = TopicPartition(topic, 0)
        await consumer.commit({tp: 3})  # a member's commit
        # what aiokafka does when the coordinator answers a heartbeat UnknownMemberId (a broker
        # restarted without its data); it rejoins, and the assignment stays active until then
        coordinator = consumer._coordinator
        coordinator.reset_generation()
        for _ in range(500):  # the rejoin under way: the broker named the member, no generation yet
            if coordinator.member_id and coordinator.generation == -1:
                break
            await asyncio.sleep(0.01)
        try:
            await consumer.commit({tp: 10})
        except Exception as exc:
            return exc
        return None
    finally:
        await consumer.stop()


@pytest.mark.parametrize("guarded", [False, True], ids=["aiokafka-own", "workaround"])
def test_a_commit_while_the_group_forgot_the_member(
    kafka_bootstrap: str, unique: str, guarded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    faust_fixes.apply()  # as the worker does; it keeps aiokafka's own method for the control
    do_commit: Any = faust_fixes.commit_of_current_assignment if guarded else faust_fixes._do_commit_offsets()
    monkeypatch.setattr(GroupCoordinator, "_do_commit_offsets", do_commit)
    topic, group = f"{unique}-commits", f"{unique}-group"
    TopicAdmin(Settings.from_env({})._with({"kafka_bootstrap": kafka_bootstrap})).ensure([topic], partitions=1)
    error = asyncio.run(_commit_after_the_group_forgot(kafka_bootstrap, topic, group))
    if guarded:
        assert error is not None and faust_fixes.is_rebalance_race(error), error
        assert _committed(kafka_bootstrap, topic, group) == 3  # only the member's commit
    else:
        # the negative control: the defect the workaround exists for, on this broker
        assert error is None
        assert _committed(kafka_bootstrap, topic, group) == 10
