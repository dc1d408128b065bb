"""Entities: who and what features describe."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A user of the platform")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A catalog item")
category = Entity(name="category", join_keys=["category"], value_type=ValueType.STRING,
                  description="An item category (used with `user` for user x category affinity)")
