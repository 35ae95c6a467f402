from diffengine.export.diffusers_folder import save_pipeline_folder
from diffengine.export.kohya import to_kohya
from diffengine.export.merged_model import merge_lora
from diffengine.export.metadata import export_metadata
from diffengine.export.single_file import to_single_file
from diffengine.export.standalone_lora import export_lora

__all__ = ["export_lora", "export_metadata", "merge_lora",
           "save_pipeline_folder", "to_kohya", "to_single_file"]
