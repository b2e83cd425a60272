"""The relayer: sends the service's transactions on chain and pays their gas.

`Relayer` is the interface the domain uses; `SimulatedChain` implements it in process for
embedded mode, the tests and the load test. Its transaction hashes are deterministic (the
Keccak-256 of the transaction), so sending the same transaction twice, say after a timeout,
returns the first receipt and spends nothing more: the chain deduplicates, as a real one
does by nonce. A share of sends can be made to fail or to hang, to exercise retries,
timeouts and the dead-letter queue.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import anyio

from reference_service.wallets import keccak256

__all__ = [
    "WEI_PER_ETH",
    "Receipt",
    "RedisChain",
    "Relayer",
    "RelayerError",
    "SimulatedChain",
    "Transaction",
    "encode_call",
]

WEI_PER_ETH = 10**18
GWEI = 10**9
GAS_PRICE_WEI = 2 * GWEI
"""2 gwei."""
DISTRIBUTOR = "0x" + keccak256(b"bastion rewards distributor")[-20:].hex()
REGISTRY = "0x" + keccak256(b"bastion wallet registry")[-20:].hex()


class RelayerError(Exception):
    """A send that did not happen (rejected, out of gas money, or injected failure)."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """A contract call: ``data`` is the ABI-encoded call, ``gas`` its gas limit."""

    to: str
    data: str
    chain_id: int
    gas: int = 90_000
    value: int = 0

    def hash(self) -> str:
        payload = json.dumps(
            [self.chain_id, self.to.lower(), self.data, self.gas, self.value], separators=(",", ":")
        )
        return "0x" + keccak256(payload.encode()).hex()

    def as_json(self) -> dict[str, object]:
        return {
            "to": self.to,
            "data": self.data,
            "chain_id": self.chain_id,
            "gas": self.gas,
            "value": str(self.value),
        }


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    block: int
    gas_used: int


def _word(value: int | str) -> str:
    if isinstance(value, str):
        value = (
            int(value, 16) if value.startswith("0x") else int.from_bytes(keccak256(value.encode()))
        )
    return f"{value:064x}"


def encode_call(signature: str, *args: int | str) -> str:
    """ABI-encode a call of static arguments: 4-byte selector, then one 32-byte word each.

    Addresses are ``0x`` strings, integers are integers; other strings are hashed to a
    ``bytes32`` (a program id, say).
    """
    selector = keccak256(signature.encode())[:4].hex()
    return "0x" + selector + "".join(_word(arg) for arg in args)


class Relayer(Protocol):
    """What the domain needs from a chain: send, a balance to watch, and a liveness check."""

    chain_id: int

    async def send(self, tx: Transaction) -> Receipt: ...

    async def balance_wei(self) -> int: ...

    async def ping(self) -> None: ...

    async def lookup(self, tx_hash: str) -> Receipt | None:
        """The receipt of a transaction the chain has, None if it never landed."""
        ...


class SimulatedChain:
    """An in-process chain: receipts by hash, a gas balance, injected failures and hangs.

    ``fail_rate`` and ``hang_rate`` are shares of sends (0..1) drawn from a seeded generator,
    so a run is reproducible; a hanging send waits until cancelled (the caller's timeout).
    They can be changed at run time (the admin API does), e.g. by the tour.
    """

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        balance_eth: Decimal = Decimal(10),
        fail_rate: float = 0.0,
        hang_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.chain_id = chain_id
        self._balance = int(balance_eth * WEI_PER_ETH)
        self.fail_rate = fail_rate
        self.hang_rate = hang_rate
        self._random = random.Random(seed)
        self._receipts: dict[str, Receipt] = {}
        self.sends = 0
        """Sends attempted, including duplicates, failures and hangs."""

    async def send(self, tx: Transaction) -> Receipt:
        self.sends += 1
        if tx.chain_id != self.chain_id:
            raise RelayerError(f"wrong chain id {tx.chain_id}, this chain is {self.chain_id}")
        tx_hash = tx.hash()
        known = self._receipts.get(tx_hash)
        if known is not None:
            return known
        draw = self._random.random()
        if draw < self.fail_rate:
            raise RelayerError("simulated failure: the node rejected the transaction")
        if draw < self.fail_rate + self.hang_rate:
            await anyio.sleep_forever()
        gas_used = 21_000 + (len(tx.data) - 2) // 2 * 16
        cost = gas_used * GAS_PRICE_WEI
        if cost > self._balance:
            raise RelayerError("the relayer cannot pay for gas: top up its balance")
        self._balance -= cost
        receipt = Receipt(tx_hash, len(self._receipts) + 1, gas_used)
        self._receipts[tx_hash] = receipt
        return receipt

    async def balance_wei(self) -> int:
        return self._balance

    async def ping(self) -> None:
        return None

    def receipt(self, tx_hash: str) -> Receipt | None:
        return self._receipts.get(tx_hash)

    async def lookup(self, tx_hash: str) -> Receipt | None:
        return self._receipts.get(tx_hash)

    async def faults(self) -> tuple[float, float]:
        return self.fail_rate, self.hang_rate

    async def set_faults(self, fail_rate: float, hang_rate: float) -> None:
        self.fail_rate, self.hang_rate = fail_rate, hang_rate


# KEYS: receipts hash, balance (gwei: wei overflow Redis integers), block counter.
# ARGV: tx hash, gas used, cost in gwei, initial balance in gwei.
# One script, so two processes sending the same transaction pay for it once.
_SEND = """
local known = redis.call('HGET', KEYS[1], ARGV[1])
if known then return known end
redis.call('SET', KEYS[2], ARGV[4], 'NX')
local cost = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[2])) < cost then return false end
redis.call('DECRBY', KEYS[2], cost)
local block = redis.call('INCR', KEYS[3])
local receipt = block .. ':' .. ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], receipt)
return receipt
"""


class RedisChain:
    """The simulated chain of real mode: its state in Redis, shared by every process.

    API processes and queue workers send through one chain, so a transaction resent by
    another worker (after a crash, say) is still recognised and paid once, and the
    reconciler sees every receipt. Fault rates live in Redis too: the admin API sets them
    for all workers at once.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "bull",
        chain_id: int = 31337,
        balance_eth: Decimal = Decimal(10),
        fail_rate: float = 0.0,
        hang_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.chain_id = chain_id
        self._redis = client
        self._initial = int(balance_eth * WEI_PER_ETH) // GWEI
        self._defaults = (fail_rate, hang_rate)
        self._random = random.Random(seed)
        base = f"{prefix}:chain:{chain_id}"
        self._receipts, self._balance, self._blocks = (
            f"{base}:receipts",
            f"{base}:balance",
            f"{base}:blocks",
        )
        self._faults_key = f"{base}:faults"
        self._send = client.register_script(_SEND)

    async def faults(self) -> tuple[float, float]:
        raw = await self._redis.hmget(self._faults_key, "fail_rate", "hang_rate")
        if raw[0] is None or raw[1] is None:
            return self._defaults
        return float(raw[0]), float(raw[1])

    async def set_faults(self, fail_rate: float, hang_rate: float) -> None:
        await self._redis.hset(
            self._faults_key, mapping={"fail_rate": fail_rate, "hang_rate": hang_rate}
        )

    async def send(self, tx: Transaction) -> Receipt:
        if tx.chain_id != self.chain_id:
            raise RelayerError(f"wrong chain id {tx.chain_id}, this chain is {self.chain_id}")
        tx_hash = tx.hash()
        known = await self.lookup(tx_hash)
        if known is not None:
            return known
        fail_rate, hang_rate = await self.faults()
        draw = self._random.random()
        if draw < fail_rate:
            raise RelayerError("simulated failure: the node rejected the transaction")
        if draw < fail_rate + hang_rate:
            await anyio.sleep_forever()
        gas_used = 21_000 + (len(tx.data) - 2) // 2 * 16
        raw = await self._send(
            keys=[self._receipts, self._balance, self._blocks],
            args=[tx_hash, gas_used, gas_used * GAS_PRICE_WEI // GWEI, self._initial],
        )
        if raw is None:
            raise RelayerError("the relayer cannot pay for gas: top up its balance")
        return self._receipt(tx_hash, raw)

    @staticmethod
    def _receipt(tx_hash: str, raw: bytes | str) -> Receipt:
        text = raw.decode() if isinstance(raw, bytes) else raw
        block, gas = text.split(":")
        return Receipt(tx_hash, int(block), int(gas))

    async def lookup(self, tx_hash: str) -> Receipt | None:
        raw = await self._redis.hget(self._receipts, tx_hash)
        return None if raw is None else self._receipt(tx_hash, raw)

    async def balance_wei(self) -> int:
        raw = await self._redis.get(self._balance)
        return (self._initial if raw is None else int(raw)) * GWEI

    async def ping(self) -> None:
        await self._redis.ping()
