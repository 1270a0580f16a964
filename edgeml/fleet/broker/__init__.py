"""The MQTT side of the fleet: the embedded broker (amqtt), its access-control plugins, and Mosquitto files."""

from edgeml.fleet.broker.accounts import BrokerAccounts, StoreAccounts, service_credentials
from edgeml.fleet.broker.component import BrokerComponent, EmbeddedBroker, ExternalBroker, parse_broker_url
from edgeml.fleet.broker.mosquitto import MosquittoFiles, mosquitto_files, write_mosquitto_files

__all__ = [
    "BrokerAccounts",
    "BrokerComponent",
    "EmbeddedBroker",
    "ExternalBroker",
    "MosquittoFiles",
    "StoreAccounts",
    "mosquitto_files",
    "parse_broker_url",
    "service_credentials",
    "write_mosquitto_files",
]
