// The wallet side of ovsb's sealed secrets, with the real @metamask/eth-sig-util.
//   node sealbox.mjs keypair                 -> {"privateKey": hex, "publicKey": base64}
//   node sealbox.mjs seal PUBLIC_KEY TEXT    -> the EthEncryptedData object (x25519-xsalsa20-poly1305)
//   node sealbox.mjs open PRIVATE_KEY JSON   -> the plaintext
import {encrypt, decrypt, getEncryptionPublicKey} from "@metamask/eth-sig-util";
import {randomBytes} from "node:crypto";

const [cmd, a, b] = process.argv.slice(2);
if (cmd === "keypair") {
  const privateKey = randomBytes(32).toString("hex");
  console.log(JSON.stringify({privateKey, publicKey: getEncryptionPublicKey(privateKey)}));
} else if (cmd === "seal") {
  console.log(JSON.stringify(encrypt({publicKey: a, data: b, version: "x25519-xsalsa20-poly1305"})));
} else if (cmd === "open") {
  process.stdout.write(decrypt({encryptedData: JSON.parse(b), privateKey: a}));
} else {
  console.error("usage: sealbox.mjs keypair | seal PUBLIC_KEY TEXT | open PRIVATE_KEY JSON");
  process.exit(2);
}
