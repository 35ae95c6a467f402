"""The adapter file record: AdapterFile, and its earlier names."""
import diffengine.lora_file
from diffengine.adapter_file import AdapterFile, read_adapter_file
from diffengine.adapters import LYCORIS_WEIGHT_NAME
from diffengine.adapters.formats import LYCORIS_FILE, file_format
from diffengine.lora_file import LoRAFile, read_lora_file


def test_earlier_names_are_the_record():
    assert LoRAFile is AdapterFile
    assert read_lora_file is read_adapter_file
    assert set(diffengine.lora_file.__all__) <= set(vars(diffengine.lora_file))


def test_a_lycoris_step_folder_reads_as_one(kind_step):
    """A LoHa step folder reads through the earlier name as the LyCORIS
    file, which the LyCORIS format loads."""
    record = read_lora_file(kind_step("LoHa").step_dir)
    assert isinstance(record, AdapterFile)
    assert record.weight_name == LYCORIS_WEIGHT_NAME
    assert record.kind("unet").name == "LoHa"
    assert file_format(record) is LYCORIS_FILE
