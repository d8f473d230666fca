"""Data layer: Diffusion Policy's zarr replay-buffer layout, validation, sequence windows,
normalization, the policy dataset and demonstration collection.

```python
from diffpolicy_immix.data import ReplayBuffer, PolicyDataset, validate_store, describe_store
buf = ReplayBuffer.open("datasets/pusht_cchi_v7_replay.zarr", in_memory=True)
ds = PolicyDataset("datasets/pusht_cchi_v7_replay.zarr", obs_keys=["keypoint", "state:0:2"])
batch = ds.get_batch(range(256))        # {"obs": (256, 16, 20), "action": (256, 16, 2)}
normalizer = ds.get_normalizer()        # LinearNormalizer with keys "obs", "action"
```
"""

from diffpolicy_immix.data.chunk_cache import ChunkedRows
from diffpolicy_immix.data.collect import collect_demonstrations
from diffpolicy_immix.data.dataset import PolicyDataset, is_image_array, parse_obs_key
from diffpolicy_immix.data.normalizer import LinearNormalizer
from diffpolicy_immix.data.replay_buffer import ReplayBuffer, ReplayBufferWriter
from diffpolicy_immix.data.sampler import SequenceSampler, gather_rows, split_episodes
from diffpolicy_immix.data.validation import DatasetError, describe_store, validate_store

__all__ = [
    "ChunkedRows",
    "DatasetError",
    "LinearNormalizer",
    "PolicyDataset",
    "ReplayBuffer",
    "ReplayBufferWriter",
    "SequenceSampler",
    "collect_demonstrations",
    "describe_store",
    "gather_rows",
    "is_image_array",
    "parse_obs_key",
    "split_episodes",
    "validate_store",
]
