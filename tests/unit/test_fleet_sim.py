"""The fleet simulator's pure parts: its plan's bounds, its keys and trust store, and the batches it seals (they
verify against the trust store it writes, as a backend would check them)."""

import pytest

from gateway.adapters.keys import TrustStore
from gateway.core.errors import KeyFileError, VerifyError
from gateway.core.wire import verify
from tools.fleet_sim import Plan, SimGateway, enroll, gateway_key


def test_sealed_batches_verify_against_the_enrolled_trust_store(tmp_path):
    plan = Plan(3, 2.0, 25, 10.0, seed=5, boot=42)
    path = str(tmp_path / "jwks.json")
    assert enroll(path, plan) == 3
    trust = TrustStore.load(path)
    gw = SimGateway("sim-0002", plan, fleet=None)
    for i in range(3):
        gw.cut(1_700_000_000.0 + i * 0.5)
    batches = [verify(s.data, trust) for s in gw.backlog]
    assert [(b.gw, b.boot, b.seq) for b in batches] == [("sim-0002", 42, 1), ("sim-0002", 42, 2), ("sim-0002", 42, 3)]
    assert [len(b.records) for b in batches] == [25, 25, 25] == [s.records for s in gw.backlog]
    times = [r["t"] for r in batches[2].records]
    assert 1_700_000_000.5 < min(times) and max(times) == pytest.approx(1_700_000_001.0)
    # another gateway's key does not speak for this one
    other = SimGateway("sim-0001", plan, fleet=None)
    other.signer = SimGateway("sim-0002", plan, fleet=None).signer
    other.cut(1_700_000_000.0)
    with pytest.raises(VerifyError) as exc:
        verify(other.backlog[0].data, trust)
    assert exc.value.reason == "gw_mismatch"


def test_keys_follow_the_seed():
    assert gateway_key(1, "sim-0000").kid == gateway_key(1, "sim-0000").kid
    assert len({gateway_key(s, g).kid for s in (1, 2) for g in ("sim-0000", "sim-0001")}) == 4


def test_enroll_overwrites_only_its_own_trust_store(tmp_path):
    path = tmp_path / "jwks.json"
    plan = Plan(2, 1.0, 1, 1.0)
    enroll(str(path), plan)
    enroll(str(path), Plan(4, 1.0, 1, 1.0))  # its own file: rewritten
    assert len(TrustStore.load(str(path)).keys) == 4
    foreign = tmp_path / "prod.json"
    foreign.write_text(path.read_text().replace('"written_by"', '"owner"'))
    with pytest.raises(KeyFileError, match="not written by fleet-sim"):
        enroll(str(foreign), plan)


@pytest.mark.parametrize("change, flag", [
    (dict(gateways=0), "--gateways"), (dict(gateways=2001), "--gateways"), (dict(rate=0.0), "--rate"),
    (dict(records=1001), "--records"), (dict(duration=4000.0), "--duration"), (dict(cut_share=1.5), "--cut-share"),
    (dict(cut_share=0.2, cut_at=50.0, cut_for=20.0), "--cut-at"), (dict(prefix="a/b"), "--prefix"),
    (dict(gateways=2000, rate=10.0, duration=11.0, preseal=True), "--preseal"),
])
def test_plan_bounds_name_the_flag(change, flag):
    fields = dict(gateways=10, rate=1.0, records=10, duration=60.0)
    fields.update(change)
    with pytest.raises(ValueError, match=flag):
        Plan(**fields).check()
    Plan(10, 1.0, 10, 60.0, cut_share=0.2, cut_at=15.0, cut_for=20.0).check()


def test_the_outage_share_is_seeded():
    plan = Plan(200, 1.0, 10, 60.0, seed=3, cut_share=0.2, cut_at=15.0, cut_for=20.0)
    assert len(plan.cut_off()) == 40 and plan.cut_off() == plan.cut_off()
    assert Plan(200, 1.0, 10, 60.0, seed=4, cut_share=0.2).cut_off() != plan.cut_off()


def test_the_schedule_cuts_each_gateway_at_its_rate_in_time_order():
    """The producer's schedule, and with --preseal the order batches are sealed in before the run."""
    plan = Plan(4, 5.0, 1, 2.0, seed=3)
    cuts = list(plan.schedule())
    assert [t for t, _ in cuts] == sorted(t for t, _ in cuts) and all(0 <= t < 2.0 for t, _ in cuts)
    for i in range(4):
        mine = [t for t, g in cuts if g == i]
        assert len(mine) == 10 and mine[0] < 0.2
        assert all(abs(b - a - 0.2) < 1e-9 for a, b in zip(mine, mine[1:]))
    assert list(Plan(4, 5.0, 1, 2.0, seed=3).schedule()) == cuts != list(Plan(4, 5.0, 1, 2.0, seed=4).schedule())


def test_a_presealed_batch_is_the_batch_a_cut_would_make(tmp_path):
    plan = Plan(1, 2.0, 5, 10.0, seed=5, boot=42, preseal=True)
    enroll(str(tmp_path / "jwks.json"), plan)
    trust = TrustStore.load(str(tmp_path / "jwks.json"))
    a, b = SimGateway("sim-0000", plan, fleet=None), SimGateway("sim-0000", plan, fleet=None)
    sealed = a.seal(1_700_000_000.0)
    assert not a.backlog  # sealed, not released yet
    b.cut(1_700_000_000.0)
    assert sealed == b.backlog[0] and verify(sealed.data, trust).seq == 1
    a.release(sealed)
    assert list(a.backlog) == [sealed] and a.counts["made"] == 1
