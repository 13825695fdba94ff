from einops import rearrange  # noqa: F401 (flash_attn.bert_padding re-exports einops' rearrange)

from . import _cuda_only

index_first_axis = _cuda_only("bert_padding.index_first_axis")
pad_input = _cuda_only("bert_padding.pad_input")
unpad_input = _cuda_only("bert_padding.unpad_input")
