// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title Cumulative Merkle distributor of edgeproof rewards
/// @notice Holds reward tokens funded by companies and pays owners against a Merkle root of
/// CUMULATIVE amounts that the gateway (the contract's owner) posts once per epoch. The tree
/// is OpenZeppelin's standard Merkle tree (npm package openzeppelin merkle-tree, leaf encoding
/// ["address", "uint256"]): leaf = keccak256(bytes.concat(keccak256(abi.encode(account,
/// cumulativeAmount)))), pairs hashed sorted. A claim pays `account` the difference between
/// its cumulative amount and what it has already been paid, whoever sends the transaction;
/// claiming the same amount again pays nothing (it reverts with NothingToClaim).
contract CumulativeMerkleDistributor is Ownable {
    using SafeERC20 for IERC20;

    /// @notice The epoch of the current root (0: no root posted yet). Packed with the owner.
    uint64 public epoch;
    /// @notice The current root of cumulative amounts.
    bytes32 public merkleRoot;
    /// @notice The token paid out.
    IERC20 public immutable token;
    /// @notice What each account has been paid so far (cumulative).
    mapping(address account => uint256 amount) public claimed;
    /// @notice What each funder has put into the distributor so far (cumulative).
    mapping(address funder => uint256 amount) public funded;
    /// @notice Everything funded so far, by everyone.
    uint256 public totalFunded;

    event RootPosted(uint64 indexed epoch, bytes32 root, uint256 total);
    event Funded(address indexed funder, bytes32 indexed terms, uint256 amount);

    error EpochNotIncreasing(uint64 current, uint64 proposed);
    error Underfunded(uint256 total, uint256 funded);
    error InvalidProof();
    error NothingToClaim(uint256 cumulativeAmount, uint256 alreadyClaimed);
    error ZeroAmount();

    constructor(IERC20 token_, address gateway) Ownable(gateway) {
        token = token_;
    }

    /// @notice Post the root of epoch `newEpoch` whose cumulative amounts add up to `total`.
    /// Only the gateway; epochs only increase; `total` must not exceed what was funded.
    function postRoot(uint64 newEpoch, bytes32 root, uint256 total) external onlyOwner {
        if (newEpoch <= epoch) revert EpochNotIncreasing(epoch, newEpoch);
        if (total > totalFunded) revert Underfunded(total, totalFunded);
        epoch = newEpoch;
        merkleRoot = root;
        emit RootPosted(newEpoch, root, total);
    }

    /// @notice Pay `account` what the current root grants it beyond what it was paid already.
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
    {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, merkleRoot, leaf)) revert InvalidProof();
        uint256 already = claimed[account];
        if (cumulativeAmount <= already) revert NothingToClaim(cumulativeAmount, already);
        claimed[account] = cumulativeAmount;
        // No Claimed event: the token's Transfer(distributor, account, amount) is the record
        // of the payment and claimed(account) the cumulative; an event of its own costs
        // ~1,400 gas per claim and would take a first claim past 90,000 gas.
        token.safeTransfer(account, cumulativeAmount - already);
    }

    /// @notice Fund the distributor with `amount` tokens (approved beforehand) for the reward
    /// terms `terms` (the hash the gateway logged for the company's data request).
    function fund(uint256 amount, bytes32 terms) external {
        if (amount == 0) revert ZeroAmount();
        funded[msg.sender] += amount;
        totalFunded += amount;
        emit Funded(msg.sender, terms, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }
}
