from diffengine.export.export_lora import export_lora
from diffengine.export.kohya import to_kohya
from diffengine.export.merge_lora import merge_lora
from diffengine.export.metadata import export_metadata

__all__ = ["export_lora", "export_metadata", "merge_lora", "to_kohya"]
