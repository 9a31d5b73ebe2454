from typing import get_args

from imagerelay.catalog.model import ChannelType
from imagerelay.upstreams.registry import CONNECTOR_FACTORIES, build_connectors


def test_every_channel_type_has_a_connector() -> None:
    assert set(get_args(ChannelType)) == set(CONNECTOR_FACTORIES)
    for name, connector in build_connectors().items():
        assert connector.type == name
