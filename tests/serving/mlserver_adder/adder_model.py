"""A tiny MLServer custom model: out = x + y (the same model neuropod serves in the tests and bench)."""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class AdderModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        out = tensors["x"] + tensors["y"]
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("out", out)],
        )
