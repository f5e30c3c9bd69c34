"""Static checks of docker-compose.yml: this machine has no Docker engine, so
the compose path is validated by parsing (README says so)."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.credentials import SERVICE_ACCOUNTS
from contracts.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PYTHON_SERVICES = ("bridge", "model_worker", "api", "sensor")
ONE_SHOT = ("kafka-init", "model-init", "credentials")
# The MQTT account each Python service connects with (mosquitto/acl grants it its job).
ACCOUNTS = {"bridge": "bridge", "model_worker": "worker", "api": "api"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    kafka_image = services["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka_image), kafka_image
    assert services["mongo"]["image"] == "mongo:7"
    assert services["mongo-express"]["image"].startswith("mongo-express:")
    for name in PYTHON_SERVICES:
        assert services[name]["build"] == ".", name
        assert services[name]["image"] == "edgepipe:local", name
    assert (REPO / "Dockerfile").is_file()


def test_kafka_is_kraft_without_zookeeper(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert not any("zookeeper" in name for name in compose["services"])
    assert not any("ZOOKEEPER" in key for key in env)


def test_sensor_scales(compose: dict[str, Any]) -> None:
    sensor = compose["services"]["sensor"]
    assert "container_name" not in sensor
    assert "ports" not in sensor
    assert "hostname" not in sensor  # each replica must keep its own hostname for its device ids
    assert sensor["command"][:3] == ["python", "-m", "edge_simulator"]


def test_health_checks_and_ordering(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert "test" in service.get("healthcheck", {}), f"{name} has no health check"
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = ("service_completed_successfully" if dep in ONE_SHOT
                        else "service_healthy")
            assert cond["condition"] == expected, (name, dep)
    assert set(services["bridge"]["depends_on"]) >= {"mosquitto", "kafka-init", "mongo"}
    assert "bridge" in services["model_worker"]["depends_on"]


def test_named_volumes_and_model_mount(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(compose["volumes"]) >= {"mosquitto-data", "kafka-data", "mongo-data"}
    mounts = {
        "mosquitto": "mosquitto-data:/mosquitto/data",
        "kafka": "kafka-data:/var/lib/kafka/data",
        "mongo": "mongo-data:/data/db",
    }
    for name, mount in mounts.items():
        assert mount in services[name]["volumes"], name
    assert "./mosquitto:/mosquitto/config:ro" in services["mosquitto"]["volumes"]
    assert "./models:/app/models" in services["model_worker"]["volumes"]
    assert services["model_worker"]["environment"]["MODEL_PATH"] == "/app/models"


def test_mongo_and_mongo_express_auth(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mongo_env = services["mongo"]["environment"]
    assert "MONGO_INITDB_ROOT_USERNAME" in mongo_env and "MONGO_INITDB_ROOT_PASSWORD" in mongo_env
    me_env = services["mongo-express"]["environment"]
    assert me_env["ME_CONFIG_BASICAUTH_USERNAME"] and me_env["ME_CONFIG_BASICAUTH_PASSWORD"]
    assert "authSource=admin" in me_env["ME_CONFIG_MONGODB_URL"]


def test_env_example_lists_every_setting(compose: dict[str, Any]) -> None:
    lines = (REPO / ".env.example").read_text().splitlines()
    listed = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z0-9_]+=", line)}
    settings_names = {name.upper() for name in Settings.model_fields}
    assert settings_names - listed == set(), "settings missing from .env.example"
    compose_vars = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    assert compose_vars - listed == set(), "compose variables missing from .env.example"


def test_access_control_is_on(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = services["credentials"]
    assert init["command"][:4] == ["python", "-m", "contracts.credentials", "init"]
    assert "credentials:/secrets" in init["volumes"]
    assert "credentials" in compose["volumes"]
    for name, account in ACCOUNTS.items():
        env = services[name]["environment"]
        assert env["MQTT_USERNAME"] == account, name
        assert env["MQTT_PASSWORD_FILE"] == f"/secrets/{account}.password", name
        assert "credentials:/secrets:ro" in services[name]["volumes"], name
        assert "@mongo:27017/" in env["MONGO_URL"], f"{name} must log in to MongoDB"
    sensor = services["sensor"]
    assert sensor["environment"]["SIMULATOR_CREDENTIALS_FILE"] == "/secrets/devices.csv"
    # read-write: replicas claim their device accounts with files beside devices.csv
    assert "credentials:/secrets" in sensor["volumes"]
    mosquitto = services["mosquitto"]
    assert "credentials:/secrets:ro" in mosquitto["volumes"]
    assert mosquitto["depends_on"]["credentials"]["condition"] == "service_completed_successfully"
    assert any(str(port).endswith(":8883") for port in mosquitto["ports"])


def test_broker_config_refuses_anonymous_and_uses_the_acl() -> None:
    conf = (REPO / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert "acl_file /mosquitto/data/acl" in conf
    entrypoint = (REPO / "mosquitto" / "entrypoint.sh").read_text()
    assert "/mosquitto/config/acl" in entrypoint and "mosquitto_passwd -U" in entrypoint
    acl = [line.strip() for line in (REPO / "mosquitto" / "acl").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    users = {line.split()[1] for line in acl if line.startswith("user ")}
    assert users == set(SERVICE_ACCOUNTS)
    assert "pattern write sensors/%u/#" in acl and "pattern read analytics/%u/#" in acl
    # no password or hash is ever committed
    for path in (REPO / "mosquitto").iterdir():
        assert "$7$" not in path.read_text(), path


def test_secrets_are_git_ignored() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".stack/" in ignored and ".env" in ignored
