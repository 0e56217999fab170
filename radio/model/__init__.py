"""Model pieces: the student ViT, CPE, adaptors and the assembled RADIOModel."""
from radio.model.adaptors import AdaptorConfig, MLPAdaptor, TeacherAdaptor
from radio.model.radio_model import FORMAT_VERSION, ModelConfig, RADIOModel, StudentTokens, TeacherHead
from radio.model.vit import STUDENT_ARCHS, RADIOStudent, StudentConfig

__all__ = [
    "AdaptorConfig", "MLPAdaptor", "TeacherAdaptor", "FORMAT_VERSION", "ModelConfig", "RADIOModel",
    "StudentTokens", "TeacherHead", "STUDENT_ARCHS", "RADIOStudent", "StudentConfig",
]
