from .. import _cuda_only

all_gather = _cuda_only("utils.distributed.all_gather")
