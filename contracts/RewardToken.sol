// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title The edgeproof reward token
/// @notice A plain OpenZeppelin ERC-20 (18 decimals) with a fixed supply minted once, at
/// deployment, to `holder` (the issuer, who sells or grants it to the companies that fund
/// distributions). No mint or burn after that: the supply is what the deployment says.
contract RewardToken is ERC20 {
    constructor(string memory name_, string memory symbol_, address holder, uint256 supply)
        ERC20(name_, symbol_)
    {
        _mint(holder, supply);
    }
}
