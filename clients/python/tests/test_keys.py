"""Redis names, as CONTRACT.md spells them."""

from infra_client import JobKind, Keys


def test_production_names_are_the_contracts() -> None:
    keys = Keys()
    assert keys.queue(JobKind.DEPLOY) == "ansible:deploy:queue"
    assert keys.queue(JobKind.PROVISION) == "provisioner:queue"
    assert keys.result_key(JobKind.DEPLOY, "d1") == "deploy:result:d1"
    assert keys.result_key(JobKind.PROVISION, "p1") == "provisioner:result:p1"
    assert keys.result_stream(JobKind.DEPLOY) == "deploy:results"
    assert keys.result_stream(JobKind.PROVISION) == "provisioner:results"
    assert keys.dead_letters() == "infra:dead"
    assert keys.events("d1") == "job:events:d1"


def test_a_prefix_applies_to_every_name() -> None:
    keys = Keys("t1:")
    assert keys.queue(JobKind.DEPLOY) == "t1:ansible:deploy:queue"
    assert keys.result_key(JobKind.DEPLOY, "d1") == "t1:deploy:result:d1"
    assert keys.dead_letters() == "t1:infra:dead"
    assert keys.events("d1") == "t1:job:events:d1"
    assert keys.unprefixed("t1:infra:dead") == "infra:dead"
    assert keys.kind_of_queue("t1:provisioner:queue") is JobKind.PROVISION
    assert keys.kind_of_queue("provisioner:queue") is None
